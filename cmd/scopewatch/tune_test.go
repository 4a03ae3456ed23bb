package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/internal/testutil"
	"github.com/scopewatch/scopewatch/tuning"
)

// TestMain lets the test binary stand in for two programs: the scopewatch
// binary (`__scopewatch ARGS`), so that a test can SIGKILL a real `tune run`
// process, and a trial command (`__trial`) that speaks the trial protocol.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "__scopewatch":
			// As main: SIGTERM and SIGINT end the context.
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			code := run(ctx, os.Args[2:], os.Stdout, os.Stderr)
			stop()
			os.Exit(code)
		case "__trial":
			os.Exit(fakeTrial())
		}
	}
	// Recalibrations are cached under the user's cache folder: the tests
	// get their own, never the developer's.
	cache, err := os.MkdirTemp("", "scopewatch-test-cache-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("XDG_CACHE_HOME", cache)
	code := m.Run()
	os.RemoveAll(cache)
	os.Exit(code)
}

// fakeTrial evaluates Branin at params x, y, after an optional delay (ms).
func fakeTrial() int {
	var in tuning.TrialInput
	if err := json.NewDecoder(bufio.NewReader(os.Stdin)).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	x, _ := in.Params["x"].(float64)
	y, _ := in.Params["y"].(float64)
	if d, ok := in.Params["delay_ms"].(float64); ok {
		time.Sleep(time.Duration(d) * time.Millisecond)
	}
	v := math.Pow(y-5.1/(4*math.Pi*math.Pi)*x*x+5/math.Pi*x-6, 2) + 10*(1-1/(8*math.Pi))*math.Cos(x) + 10
	fmt.Printf("{\"epoch\": 1, \"value\": %v}\n", v)
	return 0
}

func writeTuneStudy(t *testing.T, trials, parallel, delayMS int) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	study := fmt.Sprintf(`name: branin
objective: {command: [%q, __trial], metric: value, direction: minimize}
parameters:
  - {name: x, role: nuisance, type: float, min: -5, max: 10}
  - {name: y, role: nuisance, type: float, min: 0, max: 15}
  - {name: delay_ms, role: fixed, value: %d}
budget: {trials: %d, explore: 6, parallel: %d}
replicates: {finalists: 2, seeds: 2}
seed: 3
`, self, delayMS, trials, parallel)
	p := filepath.Join(t.TempDir(), "study.yaml")
	if err := os.WriteFile(p, []byte(study), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func lastJSONLine(t *testing.T, out string) tuning.Summary {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var sum tuning.Summary
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil {
		t.Fatalf("last stdout line %q: %v", lines[len(lines)-1], err)
	}
	return sum
}

func TestTuneRunJSON(t *testing.T) {
	study := writeTuneStudy(t, 14, 2, 0)
	dir := filepath.Join(t.TempDir(), "study")
	code, out, errs := runCLI(t, "tune", "run", study, "--out", dir, "--format", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	sum := lastJSONLine(t, out)
	if sum.Trials != 14 || sum.Complete != 14 || sum.Best == nil || len(sum.Replicates) != 2 {
		t.Fatalf("summary %+v: want 14 complete trials, a best one, 2 finalists", sum)
	}
	var raw map[string]any
	lines := strings.Split(strings.TrimSpace(out), "\n")
	json.Unmarshal([]byte(lines[len(lines)-1]), &raw)
	for _, k := range []string{"best", "trials", "pruned", "failed", "replicates"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("JSON summary lacks %q: %s", k, lines[len(lines)-1])
		}
	}
	// A second run into the same folder is refused: it would mix studies.
	if code, _, errs := runCLI(t, "tune", "run", study, "--out", dir); code != 2 || !strings.Contains(errs, "--resume") {
		t.Fatalf("rerun into a used folder: exit %d, %s", code, errs)
	}
}

func TestTuneRunRefusesBadInput(t *testing.T) {
	good := writeTuneStudy(t, 8, 1, 0)
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("name: x\nobjective: {command: [true], metric: value, direction: minimize}\nparameters:\n  - {name: lr, role: nuisance, type: float, min: 1, max: 0.1}\nbudget: {trials: 3}\n"), 0o644)
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	os.WriteFile(missing, []byte("name: x\nobjective: {command: [./no-such-trial], metric: value, direction: minimize}\nparameters:\n  - {name: lr, role: nuisance, type: float, min: 0.1, max: 1}\nbudget: {trials: 3}\n"), 0o644)
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing program", []string{"tune", "run", missing, "--out", "OUT"}, 1, "objective.command[0]"},
		{"no study", []string{"tune", "run", "--out", "x"}, 2, "want tune run"},
		{"bad min max", []string{"tune", "run", bad, "--out", "OUT"}, 1, "parameters[0] (lr)"},
		{"resume nothing", []string{"tune", "run", good, "--out", "OUT", "--resume"}, 2, "no journal"},
		{"bad format", []string{"tune", "run", good, "--out", "OUT", "--format", "xml"}, 2, "--format"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "study")
			args := append([]string(nil), c.args...)
			for i := range args {
				if args[i] == "OUT" {
					args[i] = out
				}
			}
			code, _, errs := runCLI(t, args...)
			if code != c.code || !strings.Contains(errs, c.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d mentioning %q", code, errs, c.code, c.want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Fatalf("a refused study left %s behind", out)
			}
		})
	}
}

// A real `tune run` process killed with SIGKILL in the middle of a study
// and resumed ends with the same trials and best result as an uninterrupted
// run, and its journal replays cleanly.
func TestTuneKillAndResume(t *testing.T) {
	study := writeTuneStudy(t, 16, 2, 40)
	whole := filepath.Join(t.TempDir(), "whole")
	code, out, errs := runCLI(t, "tune", "run", study, "--out", whole, "--format", "json")
	if code != 0 {
		t.Fatalf("uninterrupted run: exit %d: %s", code, errs)
	}
	want := lastJSONLine(t, out)

	dir := filepath.Join(t.TempDir(), "killed")
	self, _ := os.Executable()
	cmd := exec.Command(self, "__scopewatch", "tune", "run", study, "--out", dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	journal := filepath.Join(dir, "journal.jsonl")
	testutil.Eventually(t, 30*time.Second, func() bool {
		recs, err := tuning.ReadJournal(journal)
		tells := 0
		for _, r := range recs {
			if r.Type == tuning.RecordTell {
				tells++
			}
		}
		return err == nil && tells >= 7
	}, "the study did not get to 7 trials: %s", stderr.String())
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	code, out, errs = runCLI(t, "tune", "run", study, "--out", dir, "--resume", "--format", "json")
	if code != 0 {
		t.Fatalf("resume: exit %d: %s", code, errs)
	}
	got := lastJSONLine(t, out)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("resumed summary\n%+v\nuninterrupted\n%+v", got, want)
	}
	recs, err := tuning.ReadJournal(journal)
	if err != nil {
		t.Fatal(err)
	}
	states, err := tuning.Replay(recs)
	if err != nil {
		t.Fatalf("journal after kill and resume: %v", err)
	}
	wantRecs, _ := tuning.ReadJournal(filepath.Join(whole, "journal.jsonl"))
	wantStates, _ := tuning.Replay(wantRecs)
	if len(states) != len(wantStates) {
		t.Fatalf("%d trials after resume, %d uninterrupted", len(states), len(wantStates))
	}
	for i := range states {
		a, b := states[i].Ask, wantStates[i].Ask
		if a.Trial != b.Trial || a.Seed != b.Seed || !reflect.DeepEqual(a.Params, b.Params) || states[i].Outcome == nil {
			t.Fatalf("trial %d differs after resume: %+v vs %+v", a.Trial, a, b)
		}
	}
}

// The seed's experiment end to end on real ONNX Runtime: synthetic crops,
// their cached features, a study on the built-in head, its report.
func TestTuneFeaturesAndHeadStudy(t *testing.T) {
	dir := t.TempDir()
	cells := filepath.Join(dir, "cells")
	if code, _, errs := runCLI(t, "synth", "cells", "--out", cells, "--n", "120", "--cells-per-slide", "10", "--seed", "4242"); code != 0 {
		t.Fatalf("synth: exit %d: %s", code, errs)
	}
	feats := filepath.Join(dir, "cells.features")
	code, out, errs := runCLI(t, "tune", "features", "--data", cells, "--out", feats)
	if code != 0 {
		t.Fatalf("features: exit %d: %s", code, errs)
	}
	f, err := tuning.ReadFeatures(feats)
	if err != nil {
		t.Fatal(err)
	}
	slides := map[string]bool{}
	for _, s := range f.Slide {
		slides[s] = true
	}
	if f.N() != 120 || f.Dim != 576 || len(slides) != 12 || !strings.Contains(f.Model, "sha256:") {
		t.Fatalf("features: n %d dim %d, %d slides, model %q (stdout %s)", f.N(), f.Dim, len(slides), f.Model, out)
	}
	// A labelled folder without slide ids is refused: the validation split
	// is by slide.
	noSlide := filepath.Join(dir, "noslide")
	os.MkdirAll(noSlide, 0o755)
	os.WriteFile(filepath.Join(noSlide, "labels.csv"), []byte("path,label\na.png,parasitized\n"), 0o644)
	if code, _, errs := runCLI(t, "tune", "features", "--data", noSlide, "--out", filepath.Join(dir, "x.features")); code == 0 || !strings.Contains(errs, "slide") {
		t.Fatalf("features without slides: exit %d: %s", code, errs)
	}

	example, err := os.ReadFile("../../tuning/examples/optimizer-vs-lr.yaml")
	if err != nil {
		t.Fatal(err)
	}
	small := strings.Replace(string(example), "budget: {trials: 30, explore: 8, parallel: 2, max_epochs: 10}", "budget: {trials: 6, explore: 4, parallel: 2, max_epochs: 3}", 1)
	small = strings.Replace(small, "replicates: {finalists: 2, seeds: 3}", "replicates: {finalists: 2, seeds: 2}", 1)
	studyPath := filepath.Join(dir, "study.yaml")
	os.WriteFile(studyPath, []byte(small), 0o644)
	studyDir := filepath.Join(dir, "study")
	code, out, errs = runCLI(t, "tune", "run", studyPath, "--features", feats, "--out", studyDir, "--format", "json")
	if code != 0 {
		t.Fatalf("tune run: exit %d: %s", code, errs)
	}
	sum := lastJSONLine(t, out)
	if sum.Trials != 6 || sum.Best == nil || len(sum.Replicates) != 2 {
		t.Fatalf("summary %+v", sum)
	}
	if _, err := os.Stat(filepath.Join(studyDir, "report.html")); err != nil {
		t.Fatalf("no report: %v", err)
	}
	// The report is redrawn from the journal alone.
	os.RemoveAll(filepath.Join(studyDir, "plots"))
	if code, out, errs := runCLI(t, "tune", "report", studyDir); code != 0 || !strings.Contains(out, "report.html") {
		t.Fatalf("tune report: exit %d: %s %s", code, out, errs)
	}
	if _, err := os.Stat(filepath.Join(studyDir, "plots", "histograms.png")); err != nil {
		t.Fatalf("the best trial's weight histograms were not drawn: %v", err)
	}
	// A study naming a parameter the head does not know is refused before
	// anything is written.
	bad := strings.Replace(small, "{name: hidden, role: fixed, value: 100}", "{name: hiden, role: fixed, value: 100}", 1)
	os.WriteFile(studyPath, []byte(bad), 0o644)
	badDir := filepath.Join(dir, "bad")
	if code, _, errs := runCLI(t, "tune", "run", studyPath, "--features", feats, "--out", badDir); code != 1 || !strings.Contains(errs, "hiden") {
		t.Fatalf("unknown head parameter: exit %d: %s", code, errs)
	}
	if _, err := os.Stat(badDir); err == nil {
		t.Fatal("a refused study left its folder behind")
	}
}
