package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/drift"
	"github.com/scopewatch/scopewatch/feedback"
	"github.com/scopewatch/scopewatch/feedback/wire"

	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

// baselineModel is the pixel model (p = red/255) with the shipped bundle's
// baseline.json, under a chosen version.
type baselineModel struct {
	pixelAnalyzer
	version, baseline string
}

func (m *baselineModel) ModelVersion() string { return m.version }
func (m *baselineModel) BaselinePath() string { return m.baseline }

var _ baselineSource = (*baselineModel)(nil)

// smallDrift makes the detectors quick to calibrate (a fraction of a
// second) and quick to fill.
func smallDrift(c *config.Config) {
	c.Drift = config.Drift{Enabled: true, ERT: 300, WarnERT: 30, Windows: []int{20, 50}, Sims: 200, PersistInterval: time.Second}
}

func getDrift(t *testing.T, url string) driftStatus {
	t.Helper()
	resp, err := http.Get(url + "/v1/drift")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st driftStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/drift: %d %v", resp.StatusCode, err)
	}
	return st
}

func metricsText(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestDriftInServe(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(requireDefaultModel(t), "baseline.json")
	model := &baselineModel{version: "pix-1", baseline: base}
	td := startTestDaemonWith(t, dir, model, smallDrift)
	testutil.Eventually(t, 30*time.Second, func() bool { return getDrift(t, td.url).Active }, "drift detection running")
	if st := getDrift(t, td.url); st.ModelVersion != "pix-1" || st.SinceReset != 0 || st.Features || st.Focus || len(st.Tests) != 4 {
		t.Fatalf("fresh status %+v", st)
	}

	// A 400x400 field gives 1600 cells with p = 250/255, far above the
	// baseline's positive rate of about one half.
	field := pngBytes(t, 400, 400, 250)
	resp := upload(t, td.url+"/v1/images?slide=d1&name=f1.png", "image/png", field)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("upload: %d", resp.StatusCode)
	}
	st := getDrift(t, td.url)
	if st.SinceReset != 1600 || st.Observed != 1600 {
		t.Fatalf("after one field: %+v", st)
	}

	// The slide's label-free estimate: every cell has p = 250/255, above
	// the threshold, so the expected accuracy is that score's calibrated
	// probability q, with the binomial standard error of 1600 cells.
	b, err := drift.LoadBaseline(base)
	if err != nil {
		t.Fatal(err)
	}
	q := b.Calibration.Apply(250.0 / 255)
	r, err := http.Get(td.url + "/v1/slides/d1")
	if err != nil {
		t.Fatal(err)
	}
	var sum slideSummary
	json.NewDecoder(r.Body).Decode(&sum)
	r.Body.Close()
	if e := sum.Estimate; e == nil || e.Cells != 1600 || math.Abs(e.Accuracy-q) > 1e-9 || math.Abs(e.AccuracySE-math.Sqrt(1600*q*(1-q))/1600) > 1e-9 ||
		e.Sensitivity == nil || *e.Sensitivity != 1 {
		t.Fatalf("slide d1 estimate %+v, want %d cells, accuracy %v (q), sensitivity 1", sum.Estimate, 1600, q)
	}

	db := openDB(t, td.cfg.Database)
	countKind := func(kind string) int {
		var n int
		if err := db.QueryRow(`SELECT COUNT(*) FROM events WHERE kind = ?`, kind).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	alarms := countKind("drift_alarm")
	if alarms == 0 || countKind("drift_warn") == 0 {
		t.Fatalf("events: %d alarms, %d warnings", alarms, countKind("drift_warn"))
	}
	// Every event has its alert message queued for the broker.
	rows, err := db.Query(`SELECT id, topic, payload, kind FROM feedback_outbox WHERE id LIKE 'alert/%'`)
	if err != nil {
		t.Fatal(err)
	}
	var alerts []wire.Alert
	for rows.Next() {
		var id, topic string
		var payload []byte
		var kind string
		if err := rows.Scan(&id, &topic, &payload, &kind); err != nil {
			t.Fatal(err)
		}
		var a wire.Alert
		if err := json.Unmarshal(payload, &a); err != nil {
			t.Fatalf("alert %s: %v", id, err)
		}
		// Tests fire above their threshold; the label-free estimates of
		// accuracy, sensitivity and specificity below the baseline's bound.
		beyond := a.Drift.Statistic > a.Drift.Threshold
		switch a.Drift.Signal {
		case drift.SignalEstAccuracy, drift.SignalEstSensitivity, drift.SignalEstSpecificity:
			beyond = a.Drift.Statistic < a.Drift.Threshold
		}
		if a.Schema != wire.AlertSchema || "alert/"+a.ID != id || !strings.HasPrefix(a.Kind, "drift_") || a.Drift == nil || a.ModelVersion != "pix-1" || kind != string(feedback.KindAlert) ||
			!strings.HasSuffix(topic, "/alert") || !beyond || a.Drift.Window == 0 || a.At.IsZero() {
			t.Errorf("alert %s: %+v (topic %s)", id, a, topic)
		}
		alerts = append(alerts, a)
	}
	rows.Close()
	if len(alerts) != alarms+countKind("drift_warn") {
		t.Fatalf("%d alert messages for %d events", len(alerts), alarms+countKind("drift_warn"))
	}
	m := metricsText(t, td.url)
	for _, want := range []string{`scopewatch_drift_events_total{level="alarm",signal="positive_rate"} 1`, `scopewatch_drift_cells_total 1600`,
		`scopewatch_drift_last_event_threshold{level="alarm",signal="positive_rate"}`, `scopewatch_drift_threshold{level="alarm",signal="scores_cvm",window="50"}`,
		`scopewatch_drift_active 1`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// More drifted cells raise nothing new: each signal alarms once per reset.
	resp = upload(t, td.url+"/v1/images?slide=d1&name=f2.png", "image/png", field)
	resp.Body.Close()
	if n := countKind("drift_alarm"); n != alarms {
		t.Fatalf("alarms %d -> %d without an acknowledgement", alarms, n)
	}

	// Acknowledging restarts detection; the drift is found again.
	resp, err = http.Post(td.url+"/v1/drift/ack?by=tester", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || getDrift(t, td.url).SinceReset != 0 || countKind("drift_ack") != 1 {
		t.Fatalf("ack: %d, status %+v", resp.StatusCode, getDrift(t, td.url))
	}
	resp = upload(t, td.url+"/v1/images?slide=d1&name=f3.png", "image/png", field)
	resp.Body.Close()
	if n := countKind("drift_alarm"); n != 2*alarms {
		t.Fatalf("after the ack: %d alarms, want %d", n, 2*alarms)
	}
	var distinct int
	db.QueryRow(`SELECT COUNT(DISTINCT id) FROM feedback_outbox WHERE id LIKE 'alert/%'`).Scan(&distinct)
	if distinct != 2*len(alerts) {
		t.Fatalf("%d distinct alert ids, want %d", distinct, 2*len(alerts))
	}

	// The state survives a restart with the same model ...
	td.stop(t)
	td = startTestDaemonWith(t, dir, model, smallDrift)
	testutil.Eventually(t, 30*time.Second, func() bool { return getDrift(t, td.url).Active }, "drift detection running after restart")
	if st := getDrift(t, td.url); st.SinceReset != 1600 || st.Observed != 4800 {
		t.Fatalf("restored status: since reset %d, observed %d", st.SinceReset, st.Observed)
	}
	// ... and the latches too: no repeated alarm for the same drift.
	resp = upload(t, td.url+"/v1/images?slide=d2&name=f4.png", "image/png", field)
	resp.Body.Close()
	if n := countKind("drift_alarm"); n != 2*alarms {
		t.Fatalf("after restart: %d alarms, want still %d", n, 2*alarms)
	}

	// A new model starts afresh.
	next := &baselineModel{version: "pix-2", baseline: base}
	td.d.open = func(config.Config, *slog.Logger) (analyzer, error) { return next, nil }
	td.d.Reload(td.d.config())
	testutil.Eventually(t, 30*time.Second, func() bool { st := getDrift(t, td.url); return st.Active && st.ModelVersion == "pix-2" }, "monitor for the new model")
	if st := getDrift(t, td.url); st.SinceReset != 0 || st.Observed != 0 {
		t.Fatalf("after the swap: %+v", st)
	}
	td.stop(t)
	// The saved state is the new model's, and a restart with the old
	// model does not take it.
	var saved string
	db.QueryRow(`SELECT model_version FROM drift_state WHERE key = 'monitor'`).Scan(&saved)
	if saved != "pix-2" {
		t.Fatalf("saved state for %q", saved)
	}
	td = startTestDaemonWith(t, dir, model, smallDrift)
	testutil.Eventually(t, 30*time.Second, func() bool { return getDrift(t, td.url).Active }, "drift detection running")
	if st := getDrift(t, td.url); st.Observed != 0 {
		t.Fatalf("state of another model restored: %+v", st)
	}
}

func TestDriftCalibrationSettings(t *testing.T) {
	b, err := drift.LoadBaseline(filepath.Join(requireDefaultModel(t), "baseline.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !b.UsesSignal(drift.SignalEmbedding) {
		t.Skip("the shipped baseline has no embedding detector")
	}
	// Crops with focus measured run the baseline as shipped.
	focus := b.UsesSignal(drift.SignalFocus)
	cases := []struct {
		name   string
		cfg    config.Drift
		focus  bool
		change bool
		ert    int
		emb    bool
	}{
		{"as shipped", config.Drift{Embedding: true}, focus, false, b.Detector.ERT, true},
		{"without features", config.Drift{}, focus, true, b.Detector.ERT, false},
		{"other ERT", config.Drift{Embedding: true, ERT: 2000}, focus, true, 2000, true},
		{"small windows", config.Drift{Embedding: true, Windows: []int{20, 50}, Sims: 300}, focus, true, b.Detector.ERT, true},
		{"fields (no focus)", config.Drift{Embedding: true}, false, focus, b.Detector.ERT, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cc, change := driftCalibration(b, tc.cfg, tc.focus)
			_, emb := cc.Signals[drift.SignalEmbedding]
			if change != tc.change || cc.ERT != tc.ert || emb != tc.emb {
				t.Fatalf("change %v, ERT %d, embedding %v", change, cc.ERT, emb)
			}
			if change {
				// The simulation's statistics stay within the memory budget.
				horizon := 3 * slices.Max(cc.Windows)
				if bytes := cc.Sims * horizon * len(cc.Windows) * len(cc.Signals) * 4; bytes > calibrationBudget && cc.Sims > 100 {
					t.Fatalf("%d sims need %d MB", cc.Sims, bytes>>20)
				}
				if cc.Sims < 100 {
					t.Fatalf("%d sims", cc.Sims)
				}
			}
		})
	}
}

func TestDriftDisabled(t *testing.T) {
	td := startTestDaemon(t, func(c *config.Config) { c.Drift.Enabled = false })
	for _, req := range []struct{ method, path string }{{"GET", "/v1/drift"}, {"POST", "/v1/drift/ack"}} {
		r, _ := http.NewRequest(req.method, td.url+req.path, nil)
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s %s: %d", req.method, req.path, resp.StatusCode)
		}
	}
}

// TestDriftCalibrationFocus: the focus signal of a baseline that has one
// runs only when the daemon can feed it (crops from an analyzer that
// measures focus); otherwise the thresholds are recalibrated without it.
func TestDriftCalibrationFocus(t *testing.T) {
	// 600 test-set cells with a focus value each, as `drift build` makes
	// a baseline of a CSV with a focus column.
	r := rand.New(rand.NewPCG(1, 2))
	var scores []float64
	var labels []int
	var focusValues []float64
	for range 600 {
		l := 0
		if r.Float64() < 0.2 {
			l = 1
		}
		scores = append(scores, float64(float32(1/(1+math.Exp(-(-5+10*float64(l)+2*r.NormFloat64()))))))
		labels = append(labels, l)
		focusValues = append(focusValues, math.Exp(4+0.5*r.NormFloat64()))
	}
	b, err := drift.BuildBaseline(context.Background(), scores, labels, nil, 0.5, drift.BaselineConfig{Seed: 1, Focus: focusValues,
		Detector: drift.CalibrationConfig{ERT: 300, Windows: []int{20, 50}, Sims: 200, Null: drift.NullExchangeable}})
	if err != nil {
		t.Fatal(err)
	}
	for _, focus := range []bool{true, false} {
		cc, change := driftCalibration(b, config.Drift{}, focus)
		_, has := cc.Signals[drift.SignalFocus]
		if has != focus || change == focus {
			t.Errorf("focus usable %v: signal kept %v, recalibrated %v", focus, has, change)
		}
	}
	// The serving analyzer of the tests measures no focus.
	td := startTestDaemon(t, func(c *config.Config) { c.Images.Kind = "crop"; smallDrift(c) })
	if ok, why := td.d.drift.focusUsable(); ok || !strings.Contains(why, "does not measure focus") {
		t.Errorf("pixel analyzer: focus usable %v (%s)", ok, why)
	}
}

// focusModel is the pixel model with a focus per cell: log-normal like the
// real measure, scaled by blur (1 nominal), and a baseline with a focus
// reference drawn the same way.
type focusModel struct {
	baselineModel
	fmu  sync.Mutex
	rng  *rand.Rand
	blur float64
}

func (m *focusModel) MeasuresFocus() bool { return true }

func (m *focusModel) Analyze(ctx context.Context, data []byte, kind string) (analysis, error) {
	an, err := m.baselineModel.Analyze(ctx, data, kind)
	m.fmu.Lock()
	defer m.fmu.Unlock()
	for i := range an.Cells {
		an.Cells[i].Focus = math.Exp(4+0.5*m.rng.NormFloat64()) * m.blur
	}
	return an, err
}

var _ focusSource = (*focusModel)(nil)

// TestDriftFocusInServe runs the daemon on crops from an analyzer that
// measures focus, against a baseline with a focus reference: the focus
// detector runs, and a drop of every cell's focus (the scores unchanged)
// raises its alarm.
func TestDriftFocusInServe(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(5, 6))
	reds := func() uint8 { return uint8(r.IntN(256)) }
	var s, foc []float64
	var l []int
	for range 2000 {
		p := float64(reds()) / 255
		s, foc = append(s, p), append(foc, math.Exp(4+0.5*r.NormFloat64()))
		l = append(l, map[bool]int{true: 1}[p >= 0.5])
	}
	b, err := drift.BuildBaseline(context.Background(), s, l, nil, 0.5, drift.BaselineConfig{Seed: 2, BootstrapReps: 50, DescriptiveSims: 20, Focus: foc,
		Detector: drift.CalibrationConfig{ERT: 300, WarnERT: 30, Windows: []int{20, 50}, Sims: 200}})
	if err != nil {
		t.Fatal(err)
	}
	bpath := filepath.Join(dir, "baseline.json")
	if err := b.Save(bpath); err != nil {
		t.Fatal(err)
	}
	model := &focusModel{baselineModel: baselineModel{version: "focus-1", baseline: bpath}, rng: rand.New(rand.NewPCG(7, 8)), blur: 1}
	td := startTestDaemonWith(t, dir, model, func(c *config.Config) { smallDrift(c); c.Images.Kind = "crop" })
	testutil.Eventually(t, 30*time.Second, func() bool { return getDrift(t, td.url).Active }, "drift detection running")
	if st := getDrift(t, td.url); !st.Focus {
		t.Fatalf("focus detector not running: %+v", st)
	}
	sent := 0
	send := func(n int) {
		for range n {
			sent++
			resp := upload(t, fmt.Sprintf("%s/v1/images?slide=f&name=c%d.png", td.url, sent), "image/png", pngBytes(t, 8, 8, reds()))
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("upload: %d", resp.StatusCode)
			}
		}
	}
	send(60)
	model.fmu.Lock()
	model.blur = 0.5
	model.fmu.Unlock()
	send(60)
	var focusTests int
	for _, ts := range getDrift(t, td.url).Tests {
		if ts.Signal != drift.SignalFocus {
			continue
		}
		focusTests++
		if ts.Statistic == nil || ts.Alarm == nil || *ts.Statistic <= *ts.Alarm {
			t.Errorf("focus window %d after the drop: statistic %v, alarm threshold %v: want above", ts.Window, deref(ts.Statistic), deref(ts.Alarm))
		}
	}
	if focusTests != 2 {
		t.Fatalf("%d focus tests, want 2", focusTests)
	}
	db := openDB(t, td.cfg.Database)
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM events WHERE kind = 'drift_alarm' AND detail LIKE '%focus_cvm%'`).Scan(&n); err != nil || n == 0 {
		t.Fatalf("focus alarm events: %d (%v)", n, err)
	}
}

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}
