package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/scopewatch/scopewatch/drift"
)

// driftCells writes n cells (scores that saturate like a confident
// classifier's, truth, 8 features) to a CSV; shift moves logits and features.
func driftCells(t *testing.T, path string, n int, shift float64, seed uint64) ([]float64, []int, [][]float32) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	var buf bytes.Buffer
	buf.WriteString("p_parasitized,truth,f0,f1,f2,f3,f4,f5,f6,f7\n")
	s := make([]float64, n)
	l := make([]int, n)
	f := make([][]float32, n)
	for i := range n {
		if r.Float64() < 0.2 {
			l[i] = 1
		}
		mu := -5.0 + 10*float64(l[i])
		s[i] = float64(float32(1 / (1 + math.Exp(-(mu + 2*r.NormFloat64() + shift)))))
		f[i] = make([]float32, 8)
		fmt.Fprintf(&buf, "%v,%d", s[i], l[i])
		for j := range f[i] {
			f[i][j] = float32(r.NormFloat64() + float64(l[i]) + shift/2)
			fmt.Fprintf(&buf, ",%v", f[i][j])
		}
		buf.WriteString("\n")
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return s, l, f
}

func TestDriftReplayAndEval(t *testing.T) {
	dir := t.TempDir()
	s, l, f := driftCells(t, filepath.Join(dir, "test.csv"), 800, 0, 1)
	b, err := drift.BuildBaseline(context.Background(), s, l, f, 0.5, drift.BaselineConfig{
		Seed: 1, BootstrapReps: 100, DescriptiveSims: 50,
		Detector: drift.CalibrationConfig{ERT: 300, Windows: []int{20, 50}, Sims: 300},
	})
	if err != nil {
		t.Fatal(err)
	}
	bpath := filepath.Join(dir, "baseline.json")
	if err := b.Save(bpath); err != nil {
		t.Fatal(err)
	}
	driftCells(t, filepath.Join(dir, "null.csv"), 3000, 0, 2)
	driftCells(t, filepath.Join(dir, "shift.csv"), 400, 3, 3)
	// A stream of 100 drift-free cells, then the shift.
	null, _ := os.ReadFile(filepath.Join(dir, "null.csv"))
	shift, _ := os.ReadFile(filepath.Join(dir, "shift.csv"))
	nl := strings.SplitAfter(string(null), "\n")
	stream := strings.Join(nl[:101], "") + strings.Join(strings.SplitAfter(string(shift), "\n")[1:], "")
	spath := filepath.Join(dir, "stream.csv")
	os.WriteFile(spath, []byte(stream), 0o644)

	var out, errOut bytes.Buffer
	plot := filepath.Join(dir, "hist.svg")
	if code := run(context.Background(), []string{"drift", "replay", "--baseline", bpath, "--input", spath, "--plot", plot}, &out, &errOut); code != 0 {
		t.Fatalf("replay exit %d: %s", code, errOut.String())
	}
	var alarms int
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		var ev map[string]any
		d := json.NewDecoder(strings.NewReader(sc.Text()))
		if err := d.Decode(&ev); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		for _, k := range []string{"index", "signal", "level", "statistic", "threshold", "window"} {
			if _, ok := ev[k]; !ok {
				t.Fatalf("line %q lacks %s", sc.Text(), k)
			}
		}
		if ev["level"] == "alarm" {
			alarms++
			if idx := ev["index"].(float64); idx < 100 {
				t.Logf("alarm before the shift (possible at ERT 300): %s", sc.Text())
			}
		}
	}
	if alarms == 0 {
		t.Fatalf("no alarm on a strong shift; output:\n%s", out.String())
	}
	if st, err := os.Stat(plot); err != nil || st.Size() < 1000 {
		t.Fatalf("plot: %v", err)
	}

	out.Reset()
	errOut.Reset()
	args := []string{"drift", "eval", "--baseline", bpath, "--null", filepath.Join(dir, "null.csv"), "--runs", "30",
		"--shift", "logit=" + filepath.Join(dir, "shift.csv"), "--prevalence", "0.6", "--onset", "100", "--after", "500"}
	if code := run(context.Background(), args, &out, &errOut); code != 0 {
		t.Fatalf("eval exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"combined", "alarm", "logit", "prevalence 60%"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("eval output lacks %q:\n%s", want, out.String())
		}
	}

	// A recalibration is cached: the same replay again takes the cached
	// thresholds and gives the same events.
	cache := filepath.Join(dir, "cache")
	var first string
	for i := range 2 {
		out.Reset()
		errOut.Reset()
		args := []string{"drift", "replay", "--baseline", bpath, "--input", spath, "--ert", "400", "--calibration-cache", cache}
		if code := run(context.Background(), args, &out, &errOut); code != 0 {
			t.Fatalf("replay --ert 400: exit %d: %s", code, errOut.String())
		}
		cached := strings.Contains(errOut.String(), "from the calibration cache")
		if cached != (i == 1) {
			t.Fatalf("replay %d: cached %v, stderr %q", i+1, cached, errOut.String())
		}
		if i == 0 {
			first = out.String()
		} else if out.String() != first {
			t.Fatalf("cached thresholds gave other events:\n%s\nthen\n%s", first, out.String())
		}
	}

	// Slide by slide needs slide ids, in the pool and in the baseline.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--null-sampling", "slides"}, "slide column"},
		{[]string{"--null-model", "slides"}, "slides with at least 50 cells"},
		{[]string{"--null-model", "slides", "--slide-cells", "300"}, "want MIN,MAX"},
	} {
		errOut.Reset()
		args := append([]string{"drift", "eval", "--baseline", bpath, "--null", filepath.Join(dir, "null.csv"), "--runs", "5"}, c.args...)
		if code := run(context.Background(), args, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("eval %v: exit %d, stderr %q: want a failure naming %q", c.args, code, errOut.String(), c.want)
		}
	}

	// Bad input: a CSV without p_parasitized is a clear error.
	os.WriteFile(spath, []byte("score\n0.1\n"), 0o644)
	errOut.Reset()
	if code := run(context.Background(), []string{"drift", "replay", "--baseline", bpath, "--input", spath}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "p_parasitized") {
		t.Fatalf("bad CSV: exit %d, %s", code, errOut.String())
	}
}

// focusCells writes n cells with scores, truth and a focus column; blur
// scales the focus down (scores unchanged, as when the classifier copes
// with defocus).
func focusCells(t *testing.T, path string, n int, blur float64, seed uint64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 2))
	var buf bytes.Buffer
	buf.WriteString("p_parasitized,truth,focus\n")
	for range n {
		l := 0
		if r.Float64() < 0.2 {
			l = 1
		}
		s := float32(1 / (1 + math.Exp(-(-5 + 10*float64(l) + 2*r.NormFloat64()))))
		fmt.Fprintf(&buf, "%v,%d,%v\n", s, l, math.Exp(4+0.5*r.NormFloat64())*blur)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestDriftFocusColumn builds a baseline from a CSV with a focus column,
// replays a stream whose focus alone drops, and checks that focus_cvm
// alarms; a CSV without the column runs without the signal; eval --each
// reports the focus detector alone.
func TestDriftFocusColumn(t *testing.T) {
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	focusCells(t, p("test.csv"), 1500, 1, 1)
	focusCells(t, p("null.csv"), 3000, 1, 2)
	focusCells(t, p("blur.csv"), 600, 0.6, 3)
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"drift", "build", "--input", p("test.csv"), "--threshold", "0.5", "--out", p("baseline.json"),
		"--ert", "300", "--windows", "20,50", "--sims", "300"}, &out, &errOut); code != 0 {
		t.Fatalf("build exit %d: %s", code, errOut.String())
	}
	b, err := drift.LoadBaseline(p("baseline.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Focus) != len(b.Scores) || !b.UsesSignal(drift.SignalFocus) {
		t.Fatalf("baseline: %d focus values for %d rows; focus signal %v", len(b.Focus), len(b.Scores), b.UsesSignal(drift.SignalFocus))
	}
	null, _ := os.ReadFile(p("null.csv"))
	blur, _ := os.ReadFile(p("blur.csv"))
	stream := strings.Join(strings.SplitAfter(string(null), "\n")[:201], "") + strings.Join(strings.SplitAfter(string(blur), "\n")[1:], "")
	os.WriteFile(p("stream.csv"), []byte(stream), 0o644)
	out.Reset()
	if code := run(context.Background(), []string{"drift", "replay", "--baseline", p("baseline.json"), "--input", p("stream.csv")}, &out, &errOut); code != 0 {
		t.Fatalf("replay exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), `"signal":"focus_cvm","level":"alarm"`) {
		t.Fatalf("no focus alarm on a focus drop:\n%s", out.String())
	}

	// Without a focus column the replay recalibrates without the signal.
	var noFocus strings.Builder
	for i, line := range strings.Split(strings.TrimSpace(stream), "\n") {
		f := strings.Split(line, ",")
		if i > 220 {
			break
		}
		noFocus.WriteString(f[0] + "," + f[1] + "\n")
	}
	os.WriteFile(p("nofocus.csv"), []byte(noFocus.String()), 0o644)
	out.Reset()
	errOut.Reset()
	if code := run(context.Background(), []string{"drift", "replay", "--baseline", p("baseline.json"), "--input", p("nofocus.csv")}, &out, &errOut); code != 0 ||
		!strings.Contains(errOut.String(), "no focus column") || strings.Contains(out.String(), "focus_cvm") {
		t.Fatalf("replay without focus: exit %d, stderr %s, out %s", code, errOut.String(), out.String())
	}

	out.Reset()
	errOut.Reset()
	if code := run(context.Background(), []string{"drift", "eval", "--baseline", p("baseline.json"), "--null", p("null.csv"), "--runs", "20", "--each",
		"--shift", "blur=" + p("blur.csv"), "--onset", "100", "--after", "500"}, &out, &errOut); code != 0 {
		t.Fatalf("eval exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"focus_cvm  ", "blur", "focus_cvm:"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("eval output lacks %q:\n%s", want, out.String())
		}
	}
}
