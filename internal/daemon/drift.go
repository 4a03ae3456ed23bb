package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/scopewatch/scopewatch/drift"
	"github.com/scopewatch/scopewatch/feedback"
	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
)

// calibrationBudget bounds the memory of an in-daemon recalibration: the
// simulation keeps sims x horizon x tests float32 statistics (the
// baseline's 2000 streams over 3000 steps and 6 tests are 144 MB, which
// with ONNX Runtime breaks the 200 MB budget). Above it the streams are
// cut, and the thresholds get noisier; a bundle whose baseline already
// carries the wanted calibration needs no simulation at all.
const calibrationBudget = 16 << 20

// pendingCap bounds the cells kept while a baseline loads or calibrates;
// they are fed to the monitor once it exists.
const pendingCap = 2000

// focusSource is an analyzer that measures each crop's focus
// (cellResult.Focus); the focus detector runs only with one.
type focusSource interface {
	MeasuresFocus() bool
}

var _ focusSource = (*modelAnalyzer)(nil)

// MeasuresFocus: the classifier computes every crop's focus when drift
// runs on crops (images.kind crop).
func (a *modelAnalyzer) MeasuresFocus() bool { return a.focus }

// baselineSource is implemented by analyzers whose bundle ships a
// baseline.json.
type baselineSource interface{ BaselinePath() string }

// driftWatch owns the drift monitor of the serving model. Workers feed it
// every classified cell under mu (an O(log n) update, microseconds per
// cell); events are written after mu is released. Its goroutine (run) loads
// the baseline when a model arrives, calibrates it if the configuration
// asks for other thresholds, restores the saved state, saves the state
// periodically and at shutdown, and refreshes the gauges.
type driftWatch struct {
	driftDeps
	cfg      config.Drift
	mu       sync.Mutex
	mon      *drift.Monitor // nil while no baseline is loaded
	model    string         // model version mon belongs to
	dirty    bool           // observed or reset since the last save
	warnOn   bool           // a warn or alarm episode is open
	alarmOn  bool           // an alarm episode is open
	skipped  int64          // cells without features while the embedding detector runs
	loading  bool           // a baseline is being loaded: cells wait in pending
	pending  []drift.Observation
	reloadCh chan struct{}
}

// driftDeps is what the drift watch needs of the daemon, given at
// construction.
type driftDeps struct {
	log     *slog.Logger
	config  func() config.Config
	metrics *serveMetrics
	store   driftStore
	serving servingModel
	// raise records and publishes a drift event as an alert.
	raise func(ctx context.Context, ev drift.Event, model string)
}

// driftStore is the part of the daemon's store the watch uses: its saved
// state (drift_state) and events.
type driftStore interface {
	driftPut(ctx context.Context, key, model string, value []byte) error
	driftGet(ctx context.Context, key string) ([]byte, bool, error)
	driftGetModel(ctx context.Context, key string) ([]byte, string, bool, error)
	event(ctx context.Context, level, kind, slide, detail string) error
}

// servingModel is what the watch asks of the model being served.
type servingModel interface {
	baseline() (version, path string)
	measuresFocus() bool
}

var (
	_ driftStore   = (*dbStore)(nil)
	_ servingModel = (*swappableModel)(nil)
)

func newDriftWatch(deps driftDeps, cfg config.Drift) *driftWatch {
	return &driftWatch{driftDeps: deps, cfg: cfg, loading: true, reloadCh: make(chan struct{}, 1)}
}

// baselineFor returns the baseline the monitor runs on when it belongs to
// model (nil otherwise, or while none is loaded). A baseline is not
// changed once loaded, so the caller may use it without the lock.
func (w *driftWatch) baselineFor(model string) *drift.Baseline {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mon == nil || w.model != model {
		return nil
	}
	return w.mon.Baseline()
}

// modelChanged drops the monitor at once (cells of the new model must not
// reach the old baseline) and asks run to load the new model's baseline.
// The new monitor starts fresh: the old state belongs to the old model.
func (w *driftWatch) modelChanged() {
	w.mu.Lock()
	w.mon, w.model = nil, ""
	w.warnOn, w.alarmOn = false, false
	w.loading, w.pending = true, nil
	w.mu.Unlock()
	w.metrics.driftActive.Set(0)
	select {
	case w.reloadCh <- struct{}{}:
	default:
	}
}

// observe adds one image's cells and handles the events they triggered.
func (w *driftWatch) observe(ctx context.Context, cells []cellResult) {
	if len(cells) == 0 {
		return
	}
	var events []drift.Event
	w.mu.Lock()
	mon, model := w.mon, w.model
	if mon == nil {
		if w.loading {
			for _, c := range cells {
				if len(w.pending) < pendingCap {
					w.pending = append(w.pending, observation(c))
				} else {
					w.skipped++
				}
			}
		}
		w.mu.Unlock()
		return
	}
	n := 0
	for _, c := range cells {
		if evs, ok := w.feedLocked(mon, observation(c)); ok {
			n++
			events = append(events, evs...)
		}
	}
	if n > 0 {
		w.dirty = true
	}
	w.mu.Unlock()
	w.metrics.driftCells.Add(float64(n))
	if k := len(cells) - n; k > 0 {
		w.metrics.driftSkipped.Add(float64(k))
	}
	for _, ev := range events {
		w.raise(ctx, ev, model)
	}
	if len(events) > 0 {
		w.refreshGauges()
	}
}

// observation is what the monitor takes of a classified cell.
func observation(c cellResult) drift.Observation {
	return drift.Observation{Score: c.P, Features: c.Features, Focus: c.Focus}
}

// feedLocked adds one cell to mon and flags the events it triggered; ok is
// false (and the cell counted as skipped) when mon could not take it.
// Called with mu held.
func (w *driftWatch) feedLocked(mon *drift.Monitor, o drift.Observation) (events []drift.Event, ok bool) {
	if !mon.UsesFeatures() {
		o.Features = nil
	} else if o.Features == nil {
		w.skipped++
		return nil, false
	}
	events, err := mon.Observe(o)
	if err != nil {
		w.skipped++
		return nil, false
	}
	if len(events) > 0 {
		warn, alarm := mon.Open()
		w.warnOn, w.alarmOn = len(warn)+len(alarm) > 0, len(alarm) > 0
	}
	return events, true
}

// flagged reports an open warn or alarm episode (false without drift
// detection): the cells counted now are counted under a drift warning. A
// restored state starts unflagged until its next event.
func (w *driftWatch) flagged() bool {
	if w == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.warnOn
}

// openEpisode names the drift episodes open now ("" when none, or without
// drift detection), for the slides counted meanwhile.
func (w *driftWatch) openEpisode() string {
	if w == nil {
		return ""
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mon == nil || !w.warnOn {
		return ""
	}
	warn, alarm := w.mon.Open()
	if len(alarm) > 0 {
		return "a drift alarm (" + strings.Join(alarm, ", ") + ")"
	}
	return "a drift warning (" + strings.Join(warn, ", ") + ")"
}

// alarmed reports an open alarm episode.
func (w *driftWatch) alarmed() bool {
	if w == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.alarmOn
}

// evidence is every active test's statistic over its alarm threshold
// ("signal/window" -> ratio; above 1 means in alarm), for retune requests.
func (w *driftWatch) evidence() map[string]float64 {
	out := map[string]float64{}
	if w == nil {
		return out
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mon == nil {
		return out
	}
	for _, t := range w.mon.Status() {
		if t.Active && t.Alarm > 0 && !math.IsNaN(t.Statistic) && !math.IsInf(t.Statistic, 0) {
			out[fmt.Sprintf("%s/%d", t.Signal, t.Window)] = t.Statistic / t.Alarm
		}
	}
	out["cells_since_reset"] = float64(w.mon.SinceReset())
	return out
}

// ack acknowledges the current events: detection starts afresh.
func (w *driftWatch) ack(ctx context.Context, who string) (model string, since int64, ok bool) {
	w.mu.Lock()
	if w.mon == nil {
		w.mu.Unlock()
		return "", 0, false
	}
	since = w.mon.SinceReset()
	w.mon.Reset()
	w.warnOn, w.alarmOn = false, false
	w.dirty = true
	model = w.model
	w.mu.Unlock()
	w.metrics.driftResets.WithLabelValues("ack").Inc()
	w.store.event(ctx, "info", "drift_ack", "", fmt.Sprintf("acknowledged by %s after %d cells; detection restarted (model %s)", who, since, model))
	w.log.Info("drift acknowledged; detection restarted", "by", who, "cells_since_reset", since, "model", model)
	w.save(ctx)
	w.refreshGauges()
	return model, since, true
}

// run loads the first model's baseline and serves reloads, saves and gauge
// refreshes until ctx is cancelled, then saves once more. It must stop
// after the workers (Run cancels it with the other background work).
func (w *driftWatch) run(ctx context.Context) {
	w.load(ctx)
	save := time.NewTicker(w.cfg.PersistInterval)
	defer save.Stop()
	gauges := time.NewTicker(5 * time.Second)
	defer gauges.Stop()
	for {
		select {
		case <-ctx.Done():
			w.save(context.Background())
			return
		case <-w.reloadCh:
			w.load(ctx)
		case <-save.C:
			w.save(ctx)
		case <-gauges.C:
			w.refreshGauges()
		}
	}
}

// load builds the monitor for the model serving now.
func (w *driftWatch) load(ctx context.Context) {
	version, path := w.serving.baseline()
	done := false
	defer func() {
		if !done {
			w.mu.Lock()
			w.loading, w.pending = false, nil
			w.mu.Unlock()
		}
	}()
	if path == "" {
		w.log.Warn("the model bundle has no baseline.json; drift detection is off for this model", "model", version)
		return
	}
	start := time.Now()
	b, err := drift.LoadBaseline(path)
	if err == nil {
		b, err = w.calibrated(ctx, b)
	}
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		w.log.Error("drift detection unavailable: baseline unusable", "path", path, "err", err)
		w.store.event(ctx, "error", "drift_unavailable", "", fmt.Sprintf("%s: %v", path, err))
		return
	}
	mon, err := drift.NewMonitor(b)
	if err != nil {
		w.log.Error("drift detection unavailable", "path", path, "err", err)
		return
	}
	restored := w.restore(ctx, mon, version)
	// Cells classified while the baseline loaded go in first, in order.
	w.mu.Lock()
	if v, _ := w.serving.baseline(); v != version {
		// Swapped again meanwhile (modelChanged ran or is about to); the
		// pending reload takes over.
		w.mu.Unlock()
		done = true
		return
	}
	w.mon, w.model, w.dirty = mon, version, true
	pending := w.pending
	w.loading, w.pending, done = false, nil, true
	var events []drift.Event
	fed := 0
	for _, o := range pending {
		if evs, ok := w.feedLocked(mon, o); ok {
			fed++
			events = append(events, evs...)
		}
	}
	// Workers use mon from here on: read what the log needs first.
	windows, features, since := mon.Windows(), mon.UsesFeatures(), mon.SinceReset()
	w.mu.Unlock()
	w.metrics.driftCells.Add(float64(fed))
	for _, ev := range events {
		w.raise(ctx, ev, version)
	}
	if !restored {
		w.metrics.driftResets.WithLabelValues("new_monitor").Inc()
	}
	w.metrics.driftActive.Set(1)
	w.refreshGauges()
	cal := b.Detector
	var signals []string
	for _, t := range cal.Tests {
		if !slices.Contains(signals, t.Signal) {
			signals = append(signals, t.Signal)
		}
	}
	w.log.Info("drift detection running", "model", version, "ert", cal.ERT, "warn_ert", cal.WarnERT, "windows", windows,
		"signals", signals, "features", features, "restored", restored, "cells_since_reset", since, "fed_while_loading", fed,
		"ms", time.Since(start).Milliseconds())
}

// calibration returns the detector settings the configuration asks for and
// whether they differ from the baseline's. focus says whether the focus
// signal can run (see focusUsable); it runs when the baseline has a focus
// reference.
func driftCalibration(b *drift.Baseline, c config.Drift, focus bool) (drift.CalibrationConfig, bool) {
	d := b.Detector
	cc := d.Config()
	change := false
	if c.ERT != 0 && c.ERT != d.ERT {
		cc.ERT, cc.WarnERT, change = c.ERT, drift.DefaultWarnERT(c.ERT), true
	}
	if c.WarnERT != 0 && c.WarnERT != cc.WarnERT {
		cc.WarnERT, change = c.WarnERT, true
	}
	if len(c.Windows) > 0 && !slices.Equal(c.Windows, cc.Windows) {
		cc.Windows, change = slices.Clone(c.Windows), true
	}
	_, hasEmb := cc.Signals[drift.SignalEmbedding]
	switch {
	case hasEmb && !c.Embedding:
		delete(cc.Signals, drift.SignalEmbedding)
		change = true
	case !hasEmb && c.Embedding && b.Embedding != nil:
		cc.Signals[drift.SignalEmbedding] = 1
		change = true
	}
	_, hasFoc := cc.Signals[drift.SignalFocus]
	switch {
	case hasFoc && !focus:
		delete(cc.Signals, drift.SignalFocus)
		change = true
	case !hasFoc && focus && len(b.Focus) > 0:
		cc.Signals[drift.SignalFocus] = 1
		change = true
	}
	if change && c.Sims != 0 {
		cc.Sims = c.Sims
	}
	cc.Horizon = 0
	if change {
		horizon := 3 * slices.Max(cc.Windows)
		tests := len(cc.Windows) * len(cc.Signals)
		if limit := calibrationBudget / (4 * horizon * max(1, tests)); cc.Sims > limit {
			cc.Sims = max(100, limit)
		}
	}
	return cc, change
}

// focusUsable reports whether the focus detector can run, and why not: the
// serving analyzer must measure focus, and images must be crops. The
// baseline's focus reference describes crops on black at the model's input
// size; cells segmented from whole fields are smaller (upsampled to the
// input size) and cut out differently, so their focus is on another scale
// (measured on synth: field cells' focus exceeds crops' in about 70% of
// pairs), and every field stream would look like drift.
func (w *driftWatch) focusUsable() (bool, string) {
	if kind := w.config().Images.Kind; kind != "crop" {
		return false, fmt.Sprintf("images.kind is %s: the focus reference describes crops, and field cells' focus is on another scale", kind)
	}
	if !w.serving.measuresFocus() {
		return false, "the model does not measure focus"
	}
	return true, ""
}

// calibrated returns b recalibrated as configured: from the database's
// cache when the same baseline was calibrated the same way before, else by
// simulation (seconds to a minute), then cached.
func (w *driftWatch) calibrated(ctx context.Context, b *drift.Baseline) (*drift.Baseline, error) {
	focus, why := w.focusUsable()
	if len(b.Focus) > 0 && !focus {
		w.log.Warn("running drift detection without the focus signal", "reason", why)
	}
	cc, change := driftCalibration(b, w.cfg, focus)
	if !change {
		return b, nil
	}
	if w.cfg.Embedding && b.Embedding == nil {
		w.log.Warn("drift.embedding is on but the baseline has no embedding reference; running without it")
	}
	spec, _ := json.Marshal(cc)
	h := sha256.Sum256(append([]byte(b.Fingerprint()+"\n"), spec...))
	key := hex.EncodeToString(h[:])
	if raw, ok, err := w.store.driftGet(ctx, "calibrated"); err == nil && ok {
		var c cachedCalibration
		if json.Unmarshal(raw, &c) == nil && c.Key == key {
			if cb, err := b.WithCalibration(c.Detector); err == nil {
				return cb, nil
			}
		}
	}
	w.log.Info("calibrating the drift thresholds for the configured settings", "ert", cc.ERT, "warn_ert", cc.WarnERT,
		"windows", cc.Windows, "sims", cc.Sims, "baseline_sims", b.Detector.Sims)
	start := time.Now()
	cb, err := b.Recalibrate(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("recalibrate: %w", err)
	}
	w.log.Info("drift thresholds calibrated", "seconds", time.Since(start).Seconds())
	// Only the thresholds are cached (the rest is the bundle's baseline,
	// tens of megabytes), and only what decodes back: a restart must get
	// the same thresholds.
	if val, err := json.Marshal(cachedCalibration{Key: key, Detector: cb.Detector}); err == nil {
		var back cachedCalibration
		if json.Unmarshal(val, &back) == nil {
			if _, derr := b.WithCalibration(back.Detector); derr == nil {
				if err := w.store.driftPut(ctx, "calibrated", "", val); err != nil {
					w.log.Warn("caching the drift calibration failed", "err", err)
				}
			} else {
				w.log.Warn("the recalibrated thresholds do not decode; not cached", "err", derr)
			}
		}
	}
	return cb, nil
}

type cachedCalibration struct {
	Key      string             `json:"key"`
	Detector *drift.Calibration `json:"detector"`
}

// restore loads the saved state when it was saved for this model version
// and baseline.
func (w *driftWatch) restore(ctx context.Context, mon *drift.Monitor, version string) bool {
	raw, model, ok, err := w.store.driftGetModel(ctx, "monitor")
	if err != nil {
		w.log.Warn("reading the saved drift state failed; starting afresh", "err", err)
		return false
	}
	if !ok {
		return false
	}
	if model != version {
		w.log.Info("saved drift state belongs to another model; starting afresh", "saved_for", model, "model", version)
		return false
	}
	if err := mon.UnmarshalBinary(raw); err != nil {
		level := "warn"
		if errors.Is(err, drift.ErrStateMismatch) {
			level = "info" // the calibration changed
		}
		w.log.Log(ctx, ParseLevel(level), "saved drift state not restored; starting afresh", "err", err)
		return false
	}
	return true
}

// save writes the monitor's state when it changed since the last save.
func (w *driftWatch) save(ctx context.Context) {
	w.mu.Lock()
	if w.mon == nil || !w.dirty {
		w.mu.Unlock()
		return
	}
	raw, err := w.mon.MarshalBinary()
	model := w.model
	w.dirty = false
	w.mu.Unlock()
	if err == nil {
		err = w.store.driftPut(ctx, "monitor", model, raw)
	}
	if err != nil {
		w.log.Warn("saving the drift state failed", "err", err)
		w.mu.Lock()
		w.dirty = true
		w.mu.Unlock()
		return
	}
	w.metrics.driftSaves.Inc()
}

// driftTest is one test's state for the API (NaN becomes null).
type driftTest struct {
	Signal    string   `json:"signal"`
	Window    int      `json:"window"`
	N         int      `json:"n"`
	Active    bool     `json:"active"`
	Statistic *float64 `json:"statistic"`
	Warn      *float64 `json:"warn_threshold"`
	Alarm     *float64 `json:"alarm_threshold"`
}

type driftEstimate struct {
	Window      int      `json:"window"`
	N           int      `json:"n"`
	Accuracy    *float64 `json:"accuracy"`
	Sensitivity *float64 `json:"sensitivity"`
	Specificity *float64 `json:"specificity"`
}

// driftStatus is GET /v1/drift.
type driftStatus struct {
	Active       bool            `json:"active"`
	ModelVersion string          `json:"model_version,omitempty"`
	Observed     int64           `json:"observed"`
	SinceReset   int64           `json:"since_reset"`
	Skipped      int64           `json:"skipped"`
	Features     bool            `json:"features"`
	Focus        bool            `json:"focus"` // the focus detector runs
	Tests        []driftTest     `json:"tests,omitempty"`
	Performance  []driftEstimate `json:"performance,omitempty"`
}

func finiteOrNil(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}

func (w *driftWatch) status() driftStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := driftStatus{Skipped: w.skipped}
	if w.mon == nil {
		return st
	}
	st.Active, st.ModelVersion = true, w.model
	st.Observed, st.SinceReset, st.Features, st.Focus = w.mon.Index(), w.mon.SinceReset(), w.mon.UsesFeatures(), w.mon.UsesFocus()
	for _, t := range w.mon.Status() {
		st.Tests = append(st.Tests, driftTest{Signal: t.Signal, Window: t.Window, N: t.N, Active: t.Active,
			Statistic: finiteOrNil(t.Statistic), Warn: finiteOrNil(t.Warn), Alarm: finiteOrNil(t.Alarm)})
	}
	for _, e := range w.mon.Performance() {
		st.Performance = append(st.Performance, driftEstimate{Window: e.Window, N: e.N,
			Accuracy: finiteOrNil(e.Accuracy), Sensitivity: finiteOrNil(e.Sensitivity), Specificity: finiteOrNil(e.Specificity)})
	}
	return st
}

// refreshGauges copies every test's current statistic and thresholds into
// the gauges (NaN while a test's window is filling).
func (w *driftWatch) refreshGauges() {
	w.mu.Lock()
	var tests []drift.TestStatus
	if w.mon != nil {
		tests = w.mon.Status()
	}
	w.mu.Unlock()
	m := w.metrics
	for _, t := range tests {
		win := fmt.Sprint(t.Window)
		s := t.Statistic
		if !t.Active {
			s = math.NaN()
		}
		m.driftStatistic.WithLabelValues(t.Signal, win).Set(s)
		m.driftThreshold.WithLabelValues(t.Signal, win, drift.LevelWarn).Set(t.Warn)
		m.driftThreshold.WithLabelValues(t.Signal, win, drift.LevelAlarm).Set(t.Alarm)
	}
}

// driftEvent records a warn or alarm: an events row and the alert message
// in one transaction, then the metrics.
func (d *Daemon) driftEvent(ctx context.Context, ev drift.Event, model string) {
	cfg := d.config()
	now := d.now().UTC()
	// Stable and unique: one event per signal, level and window at a
	// stream position, within one database instance, boot and model.
	id := fmt.Sprintf("%s-%s-%d-drift-%s-%d-%s-%s-%d", cfg.Device, d.db.instance, d.boot, model, ev.Index, ev.Signal, ev.Level, ev.Window)
	kind := "drift_" + ev.Level
	level := wire.SeverityWarn
	if ev.Level == drift.LevelAlarm {
		level = wire.SeverityError
	}
	detail := fmt.Sprintf("%s %s: statistic %.4g > threshold %.4g on the last %d cells (cell %d, model %s)",
		ev.Signal, ev.Level, ev.Statistic, ev.Threshold, ev.Window, ev.Index, model)
	if ev.Phase == drift.PhaseEnd {
		// The episode's end is news too: results counted from here on are
		// no longer under this warning.
		id += "-end"
		kind += "_end"
		level = wire.SeverityInfo
		detail = fmt.Sprintf("%s %s ended: within its thresholds for the last %d cells (episode from cell %d to %d, model %s)",
			ev.Signal, ev.Level, ev.Window, ev.Since, ev.Index, model)
	}
	a := wire.Alert{Schema: wire.AlertSchema, ID: id, Site: cfg.Site, Device: cfg.Device, Kind: kind,
		Severity: level, Detail: detail, ModelVersion: model, Boot: d.boot, At: now,
		Drift: &wire.DriftEvidence{Signal: ev.Signal, Level: ev.Level, Phase: ev.Phase, Statistic: ev.Statistic, Threshold: ev.Threshold, Window: ev.Window, Index: ev.Index}}
	var recs []feedback.Record
	if cfg.MQTT.Enabled {
		payload, err := json.Marshal(a)
		if err != nil { // a non-finite statistic; never expected
			d.log.Error("encoding the drift alert failed", "err", err)
		} else {
			recs = append(recs, feedback.Record{ID: "alert/" + id, Kind: feedback.KindAlert, Topic: d.topic(mqttconn.KindAlert), Payload: payload, QoS: 1})
		}
	}
	if err := d.db.recordAlert(ctx, level, kind, detail, recs...); err != nil {
		d.log.Error("recording the drift event failed", "err", err)
	}
	if ev.Phase == drift.PhaseEnd {
		d.metrics.driftEvents.WithLabelValues(ev.Signal, ev.Level+"_end").Inc()
		d.log.Info("drift "+ev.Level+" ended", "signal", ev.Signal, "window", ev.Window, "since", ev.Since, "index", ev.Index, "model", model)
		return
	}
	if d.ro != nil {
		d.ro.driftAlarm(ev, model)
	}
	d.metrics.driftEvents.WithLabelValues(ev.Signal, ev.Level).Inc()
	d.metrics.driftLastStatistic.WithLabelValues(ev.Signal, ev.Level).Set(ev.Statistic)
	d.metrics.driftLastThreshold.WithLabelValues(ev.Signal, ev.Level).Set(ev.Threshold)
	d.log.Warn("drift "+ev.Level, "signal", ev.Signal, "statistic", ev.Statistic, "threshold", ev.Threshold,
		"window", ev.Window, "index", ev.Index, "model", model)
}
