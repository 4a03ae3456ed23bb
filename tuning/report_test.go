package tuning

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const reportStudyYAML = `
name: optimizer-vs-lr
objective: {command: ["true"], metric: val_loss, direction: minimize}
parameters:
  - {name: optimizer, role: scientific, type: categorical, values: [adam, sgd]}
  - {name: lr, role: nuisance, type: float, min: 1e-4, max: 1e-1, log: true}
  - {name: dropout, role: nuisance, type: float, min: 0, max: 0.5}
  - {name: batch_size, role: fixed, value: 248}
budget: {trials: 20, explore: 8, max_epochs: 5}
replicates: {finalists: 2, seeds: 3}
seed: 1
`

// synth describes a synthetic study folder.
type synth struct {
	trials     int
	failed     []int
	pruned     []int
	sgd        func(n int) bool // which trials use sgd
	bestAtEdge bool             // the best trial's lr at the lower bound
	replicates bool
	histograms bool
	unfinished bool // one more search trial asked and never told
}

const (
	bestTrial   = 10
	runnerUp    = 4
	injected    = "exit status 1: <script>alert(1)</script>"
	injectedEsc = "&lt;script&gt;alert(1)&lt;/script&gt;"
)

func (sy synth) lr(n int) float64 {
	switch {
	case n == bestTrial && sy.bestAtEdge:
		return 1.05e-4
	case n == bestTrial:
		return 3e-3
	}
	return math.Pow(10, -4+3*math.Mod(float64(n)*0.618034, 1))
}

func (sy synth) dropout(n int) float64 {
	if n == bestTrial {
		return 0.2
	}
	return 0.5 * math.Mod(float64(n)*0.414214+0.1, 1)
}

// value is a smooth bowl in lr and dropout, with sgd a little worse, and two
// trials forced to be the best and the runner-up.
func (sy synth) value(n int, opt string) float64 {
	switch n {
	case bestTrial:
		return 0.05
	case runnerUp:
		return 0.08
	}
	v := 0.2 + 0.1*math.Pow(math.Log10(sy.lr(n))+2.5, 2) + math.Pow(sy.dropout(n)-0.2, 2)
	if opt == "sgd" {
		v += 0.05
	}
	return v
}

func epochs(final float64, n int) []Epoch {
	var out []Epoch
	for e := 1; e <= n; e++ {
		f := float64(n-e) / float64(n)
		out = append(out, Epoch{"epoch": float64(e), "val_loss": final + 0.3*f, "train_loss": final - 0.02 + 0.35*f, "val_acc": 0.9 - f*0.4})
	}
	return out
}

// write builds the study folder and returns it.
func (sy synth) write(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	s, err := Decode(strings.NewReader(reportStudyYAML))
	if err != nil {
		t.Fatal(err)
	}
	j, _, err := OpenJournal(filepath.Join(dir, "journal.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	at := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	appendRec := func(r Record) {
		t.Helper()
		r.At = at
		if err := j.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	appendRec(Record{Type: RecordStudy, Study: s})
	params := map[int]Params{}
	for n := 1; n <= sy.trials; n++ {
		opt := "adam"
		if sy.sgd(n) {
			opt = "sgd"
		}
		phase := "explore"
		if n > 8 {
			phase = "exploit"
		}
		ps := Params{"optimizer": opt, "lr": sy.lr(n), "dropout": sy.dropout(n), "batch_size": 248}
		params[n] = ps
		appendRec(Record{Type: RecordAsk, Trial: n, Seed: int64(1000 + n), Phase: phase, Params: ps})
		v := sy.value(n, opt)
		o := Outcome{State: StateComplete, Value: v, Epochs: epochs(v, 5)}
		switch {
		case slices.Contains(sy.failed, n):
			o = Outcome{State: StateFailed, Value: math.NaN(), Reason: injected}
		case slices.Contains(sy.pruned, n):
			o = Outcome{State: StatePruned, Value: v + 0.3, Epochs: epochs(v, 5)[:2], Reason: "stopped after epoch 2"}
		}
		appendRec(Record{Type: RecordTell, Trial: n, Outcome: &o})
	}
	if sy.unfinished {
		n := sy.trials + 1
		appendRec(Record{Type: RecordAsk, Trial: n, Seed: int64(1000 + n), Phase: "exploit",
			Params: Params{"optimizer": "adam", "lr": sy.lr(n), "dropout": sy.dropout(n), "batch_size": 248}})
	}
	if sy.replicates {
		n := sy.trials
		reps := map[int][]float64{bestTrial: {0.06, 0.07, 0.065}, runnerUp: {0.085, 0.09, 0.08}}
		for _, of := range []int{bestTrial, runnerUp} {
			for k, v := range reps[of] {
				n++
				appendRec(Record{Type: RecordAsk, Trial: n, Seed: int64(101 + k), Phase: "replicate", Of: of, Params: params[of]})
				appendRec(Record{Type: RecordTell, Trial: n, Outcome: &Outcome{State: StateComplete, Value: v, Epochs: epochs(v, 5)}})
			}
		}
	}
	if sy.histograms {
		tdir := filepath.Join(dir, "trials", fmt.Sprintf("%04d", bestTrial))
		if err := os.MkdirAll(tdir, 0o755); err != nil {
			t.Fatal(err)
		}
		var h Histograms
		for _, layer := range []string{"backbone.last", "head"} {
			l := LayerHistograms{Name: layer}
			for e := 1; e <= 5; e++ {
				ws := make([]float64, 400)
				for i := range ws {
					// A bell whose spread grows with the epoch, as a learning
					// layer's does.
					u := math.Mod(float64(i)*0.618034, 1) + math.Mod(float64(i)*0.414214, 1) + math.Mod(float64(i)*0.302776, 1) - 1.5
					ws[i] = u * (1 + 0.3*float64(e))
				}
				l.Epochs = append(l.Epochs, Histogram(e, ws, 20))
			}
			h.Layers = append(h.Layers, l)
		}
		if err := WriteHistograms(tdir, h); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func fullSynth() synth {
	return synth{trials: 20, failed: []int{3, 7, 15}, pruned: []int{5, 12},
		sgd: func(n int) bool { return n%2 == 1 }, replicates: true, histograms: true}
}

func checkPlotFiles(t *testing.T, dir string, rep *Report) {
	t.Helper()
	for _, p := range rep.Plots {
		for _, f := range p.Files() {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Errorf("plot %s: %v", p.Name, err)
				continue
			}
			switch {
			case strings.HasSuffix(f, ".png") && !bytes.HasPrefix(b, []byte("\x89PNG")):
				t.Errorf("%s is not a PNG", f)
			case strings.HasSuffix(f, ".svg") && !bytes.Contains(b, []byte("<svg")):
				t.Errorf("%s is not an SVG", f)
			}
		}
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".report-*"))
	if len(left) > 0 {
		t.Errorf("temporary folders left behind: %v", left)
	}
}

func TestWriteReport(t *testing.T) {
	dir := fullSynth().write(t)
	rep, err := WriteReport(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkPlotFiles(t, dir, rep)
	want := []struct {
		name                 string
		series, bars, panels int
	}{
		{PlotCurves, 3 * 2, 0, 2}, // val_loss (the metric) and train_loss
		{PlotHistograms, 2 * 3, 0, 2},
		{PlotParallel, 20, 0, 1},
		{PlotHistory, 3 + 1, 0, 1}, // explore, exploit, replicate, best so far
		{PlotIsolation + "-optimizer", 2, 2, 2},
		{PlotImportance, 0, 3, 1},
		{PlotFinalists, 1, 2, 1},
	}
	if len(rep.Plots) != len(want) {
		var names []string
		for _, p := range rep.Plots {
			names = append(names, p.Name)
		}
		t.Errorf("plots %v, want %d; notes %v", names, len(want), rep.Notes)
	}
	for _, w := range want {
		p := rep.Plot(w.name)
		if p == nil {
			t.Errorf("plot %s missing", w.name)
			continue
		}
		if p.Series != w.series || p.Bars != w.bars || p.Panels != w.panels {
			t.Errorf("plot %s: %d series, %d bars, %d panels; want %d, %d, %d", w.name, p.Series, p.Bars, p.Panels, w.series, w.bars, w.panels)
		}
	}

	a := rep.Analysis
	if a.Best == nil || a.Best.Trial != bestTrial {
		t.Fatalf("best %+v, want trial %d", a.Best, bestTrial)
	}
	if c := a.Counts; c != (Counts{Trials: 20, Complete: 15, Pruned: 2, Failed: 3}) {
		t.Errorf("counts %+v", c)
	}
	sum := 0.0
	for _, im := range a.Importance {
		sum += im.Share
	}
	if len(a.Importance) != 3 || math.Abs(sum-1) > 1e-9 {
		t.Errorf("importance %+v sums to %g", a.Importance, sum)
	}
	if len(a.Isolation) != 2 || a.Isolation[0].Refusal != "" || a.Isolation[1].Refusal != "" {
		t.Errorf("isolation %+v", a.Isolation)
	}
	if len(a.Finalists) != 2 || a.Finalists[0].Trial != bestTrial || math.Abs(a.Finalists[0].Mean-0.065) > 1e-9 || math.Abs(a.Finalists[0].Std-0.005) > 1e-9 {
		t.Errorf("finalists %+v", a.Finalists)
	}
	if c := a.Comparison; c == nil || c.N != 3 || math.Abs(c.Mean+0.02) > 1e-9 || math.Abs(c.Std-0.005) > 1e-9 || c.WithinNoise {
		t.Errorf("comparison %+v", c)
	}
	for _, w := range a.Warnings {
		if strings.Contains(w, "bound") || strings.Contains(w, "failed") {
			t.Errorf("unexpected warning %q", w)
		}
	}

	page, err := os.ReadFile(filepath.Join(dir, "report.html"))
	if err != nil {
		t.Fatal(err)
	}
	html := string(page)
	for _, s := range []string{"optimizer-vs-lr", "Trial <b>10</b>", "held at 248", "scientific", "nuisance",
		injectedEsc, "plots/parallel.png", "plots/isolation-optimizer.svg", "-0.02 ± 0.005", "over 3 seeds"} {
		if !strings.Contains(html, s) {
			t.Errorf("report.html lacks %q", s)
		}
	}
	if strings.Contains(html, "<script>") {
		t.Error("report.html carries the injected <script> unescaped")
	}

	// Redrawn without histograms, the stale plot goes with the old folder.
	if err := os.Remove(filepath.Join(dir, "trials", fmt.Sprintf("%04d", bestTrial), HistogramsFile)); err != nil {
		t.Fatal(err)
	}
	rep, err = WriteReport(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Plot(PlotHistograms) != nil {
		t.Error("histograms drawn without a histograms file")
	}
	if _, err := os.Stat(filepath.Join(dir, "plots", "histograms.png")); !os.IsNotExist(err) {
		t.Errorf("stale histograms.png: %v", err)
	}
	checkPlotFiles(t, dir, rep)
}

func TestReportBoundWarning(t *testing.T) {
	for _, edge := range []bool{false, true} {
		sy := fullSynth()
		sy.bestAtEdge = edge
		a, err := Analyze(journalOf(t, sy.write(t)))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, w := range a.Warnings {
			if strings.Contains(w, "bound") {
				got = append(got, w)
			}
		}
		if edge && (len(got) != 1 || !strings.Contains(got[0], "lr") || !strings.Contains(got[0], "lower bound")) {
			t.Errorf("best at the lower bound of lr: warnings %q", got)
		}
		if !edge && len(got) != 0 {
			t.Errorf("best inside the range: warnings %q", got)
		}
	}
}

func journalOf(t *testing.T, dir string) []Record {
	t.Helper()
	recs, err := ReadJournal(filepath.Join(dir, "journal.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func TestReportFailedWarning(t *testing.T) {
	sy := fullSynth()
	sy.failed = []int{3, 7, 11, 15, 17} // 5 of 20
	dir := sy.write(t)
	rep, err := WriteReport(dir)
	if err != nil {
		t.Fatal(err)
	}
	var found string
	for _, w := range rep.Warnings {
		if strings.Contains(w, "failed") {
			found = w
		}
	}
	if !strings.Contains(found, "5 of 20") {
		t.Fatalf("warnings %q lack the failed share", rep.Warnings)
	}
	page, err := os.ReadFile(filepath.Join(dir, "report.html"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(page), "5 of 20 finished search trials failed") {
		t.Error("report.html lacks the failed warning")
	}
}

func TestReportWithoutReplicatesOrHistograms(t *testing.T) {
	sy := synth{trials: 12, failed: []int{6}, sgd: func(n int) bool { return n == 3 || n == 7 }, unfinished: true}
	dir := sy.write(t)
	rep, err := WriteReport(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkPlotFiles(t, dir, rep)
	if rep.Plot(PlotHistograms) != nil || rep.Plot(PlotFinalists) != nil {
		t.Errorf("plots %+v drawn without their data", rep.Plots)
	}
	for _, name := range []string{PlotCurves, PlotParallel, PlotHistory, PlotIsolation + "-optimizer", PlotImportance} {
		if rep.Plot(name) == nil {
			t.Errorf("plot %s missing; notes %q", name, rep.Notes)
		}
	}
	if p := rep.Plot(PlotParallel); p.Series != 13 {
		t.Errorf("parallel: %d polylines, want 13 (the unfinished trial too)", p.Series)
	}
	if !slices.ContainsFunc(rep.Warnings, func(w string) bool { return strings.Contains(w, "never told") }) {
		t.Errorf("warnings %q lack the unfinished trial", rep.Warnings)
	}
	if c := rep.Analysis.Counts; c.Unfinished != 1 || c.Trials != 13 {
		t.Errorf("counts %+v", c)
	}
	if _, err := json.Marshal(rep); err != nil {
		t.Errorf("report to JSON: %v", err)
	}
	if _, err := json.Marshal(rep.Analysis); err != nil {
		t.Errorf("analysis to JSON (failed trials have no value): %v", err)
	}
	notes := strings.Join(rep.Notes, "\n")
	if !strings.Contains(notes, "wrote no "+HistogramsFile) || !strings.Contains(notes, "no replicates") {
		t.Errorf("notes %q", notes)
	}
	if p := rep.Plot(PlotHistory); p.Series != 2+1 {
		t.Errorf("history: %d series, want explore, exploit and best so far", p.Series)
	}
	page, err := os.ReadFile(filepath.Join(dir, "report.html"))
	if err != nil {
		t.Fatal(err)
	}
	html := string(page)
	for _, s := range []string{"too few trials to compare", "wrote no " + HistogramsFile} {
		if !strings.Contains(html, s) {
			t.Errorf("report.html lacks %q", s)
		}
	}
	if strings.Contains(html, "<h2>Finalists</h2>") {
		t.Error("a finalists section without replicates")
	}
}

func TestImportanceFindsTheParameterThatMatters(t *testing.T) {
	params := []Parameter{
		{Name: "x", Role: RoleNuisance, Type: TypeFloat, Min: ptr(0.0), Max: ptr(1.0)},
		{Name: "noise", Role: RoleNuisance, Type: TypeFloat, Min: ptr(0.0), Max: ptr(1.0)},
		{Name: "c", Role: RoleNuisance, Type: TypeCategorical, Values: []any{"a", "b"}},
	}
	var ts []TrialResult
	for i := range 40 {
		x := math.Mod(float64(i)*0.618034, 1)
		noise := math.Mod(float64(i)*0.414214, 1)
		ts = append(ts, TrialResult{Trial: i + 1, State: StateComplete, Value: 10*x + 0.1*noise,
			Params: Params{"x": x, "noise": noise, "c": []string{"a", "b"}[i%2]}})
	}
	im := importance(params, ts)
	if len(im) != 3 || im[0].Share < 0.9 || im[0].Bins != 5 || math.Abs(im[0].Share+im[1].Share+im[2].Share-1) > 1e-9 {
		t.Errorf("importance %+v: x decides the value", im)
	}
}

func ptr(v float64) *float64 { return &v }

func TestReportOfAStudyNotStarted(t *testing.T) {
	dir := synth{trials: 0, sgd: func(int) bool { return false }}.write(t)
	rep, err := WriteReport(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Plots) != 0 || len(rep.Notes) == 0 {
		t.Errorf("plots %+v, notes %q", rep.Plots, rep.Notes)
	}
	if _, err := os.Stat(rep.HTML); err != nil {
		t.Error(err)
	}
}

func TestAnalyzeRefusesJournalWithoutStudy(t *testing.T) {
	if _, err := Analyze([]Record{{Type: RecordAsk, Trial: 1}}); err == nil {
		t.Fatal("a journal without a study record was analysed")
	}
}
