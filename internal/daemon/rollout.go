package daemon

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/drift"
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/rollout"
)

// rolloutLink is the device's side of a model rollout: the two slots the
// daemon serves from, the taker that follows the site's offers, the
// candidate's shadow run beside the champion, promotion and rollback, and
// the watch over a newly promoted model. Workers call shadowImage and
// slideDone; everything else runs on the taker's goroutine or an HTTP
// request.
type rolloutLink struct {
	rolloutDeps
	dir   string
	slots *rollout.Slots
	taker *rollout.Taker

	mu     sync.Mutex
	rng    *rand.Rand
	shadow *shadowRun
	// watch counts the promoted model's cells until WatchCells; nil when
	// no promotion is being watched.
	watch *promotionWatch
	last  rollout.Event
}

type rolloutDeps struct {
	log     *slog.Logger
	config  func() config.Config
	now     func() time.Time
	metrics *serveMetrics
	// open loads a bundle folder as the serving model would be loaded.
	open func(config.Config, *slog.Logger) (analyzer, error)
	// serve makes the daemon serve the bundle at path (a swap that waits
	// for images in flight).
	serve func(path string) error
	// alert sends an alert and journals it.
	alert func(ctx context.Context, kind, detail string)
	// journal records an event only.
	journal func(ctx context.Context, level, kind, detail string)
	// changed is called after every stage change (status refresh).
	changed func()
	// champGated reports whether the serving model's plausibility gate
	// has a reference.
	champGated func() bool
	seed       uint64
}

// shadowRun is a candidate classifying a share of live images beside the
// champion, and what the comparison has found so far.
type shadowRun struct {
	cand  rollout.Candidate
	model analyzer
	mon   *drift.Monitor // nil when the candidate has no usable baseline
	since time.Time

	images, cells, agree int
	champNS, candNS      int64
	slides               map[string]*shadowSlide
	done                 []shadowSlideResult
	alarms               []string
	failed               int
}

type shadowSlide struct{ cells, champPos, candPos int }

// shadowSlideResult is one completed slide of a shadow run.
type shadowSlideResult struct {
	Slide string `json:"slide"`
	Cells int    `json:"cells"`
	// Champion and Candidate are the parasitemia (percent) each model
	// counts on the same shadowed cells.
	Champion  float64 `json:"champion_parasitemia"`
	Candidate float64 `json:"candidate_parasitemia"`
}

// ShadowEvidence is what a shadow run measured, reported with its outcome.
type ShadowEvidence struct {
	Candidate string              `json:"candidate"`
	Images    int                 `json:"images"`
	Cells     int                 `json:"cells"`
	Agreement float64             `json:"agreement"`
	Slides    []shadowSlideResult `json:"slides"`
	// Agreement is the share of shadowed cells both models label alike
	// (0 before any); LatencyRatio the candidate's time per shadowed image
	// over the champion's on the same images (0 before any).
	LatencyRatio float64  `json:"latency_ratio"`
	DriftAlarms  []string `json:"candidate_drift_alarms,omitempty"`
	Failed       int      `json:"candidate_failures"`
}

type promotionWatch struct {
	version string
	cells   int
}

// newRolloutLink opens the slots (installing model.path into them at the
// first start) and builds the taker; the daemon then serves from
// ServingPath.
func newRolloutLink(deps rolloutDeps, cfg config.Config) (*rolloutLink, error) {
	r := &rolloutLink{rolloutDeps: deps, dir: cfg.Rollout.Dir, rng: rand.New(rand.NewPCG(deps.seed, deps.seed^0x9e3779b97f4a7c15))}
	keys, err := trustedKeys(cfg)
	if err != nil {
		return nil, err
	}
	identify := func(dir string) (string, string, error) {
		b, err := inference.OpenBundle(dir, inference.BundleOptions{TrustedKeys: keys, AllowUnsigned: cfg.Model.AllowUnsigned})
		if err != nil {
			return "", "", err
		}
		defer b.Close()
		return b.Manifest.Version, b.ManifestSHA256, nil
	}
	slotsDir := cfg.Rollout.Dir
	first := false
	if _, err := os.Lstat(filepath.Join(slotsDir, rollout.CurrentLink)); errors.Is(err, os.ErrNotExist) {
		first = true
	}
	if r.slots, err = rollout.OpenSlots(slotsDir, cfg.Model.Path, identify, deps.now); err != nil {
		return nil, err
	}
	if first {
		// A plausibility reference kept beside the initial bundle goes
		// beside its slot, where the gate looks for it.
		if err := copySidecar(cfg.Model.Path, r.slotPath(r.slots.Champion().Name)); err != nil {
			return nil, fmt.Errorf("rollout: %w", err)
		}
	}
	topics, err := mqttconn.NewTopics(cfg.MQTT.TopicRoot)
	if err != nil {
		return nil, err
	}
	r.taker, err = rollout.NewTaker(rollout.TakerConfig{
		Slots: r.slots, Topics: topics, Site: cfg.Site, Staging: filepath.Join(slotsDir, "staging"), MaxArchive: cfg.Rollout.MaxArchiveBytes,
		Verify: func(archive string) (rollout.Verified, error) {
			b, err := inference.OpenBundle(archive, inference.BundleOptions{TrustedKeys: keys, TempDir: filepath.Join(slotsDir, "staging")})
			if err != nil {
				return rollout.Verified{}, err
			}
			return rollout.Verified{Dir: b.Dir, Version: b.Manifest.Version, ManifestSHA256: b.ManifestSHA256, Close: func() { b.Close() }}, nil
		},
		Score: func(dir string) (rollout.Scorer, func(), error) {
			// A staged slot has no sidecar: a stale one of the bundle that
			// used the slot before would refuse it.
			os.Remove(inferenceSidecar(dir))
			b, err := inference.OpenBundle(dir, inference.BundleOptions{TrustedKeys: keys})
			if err != nil {
				return nil, nil, err
			}
			c, err := inference.NewClassifier(b, inference.ClassifierOptions{NoFeatures: true, NoFocus: true, NoAppearance: true,
				Engine: inference.EngineOptions{IntraOpThreads: cfg.Model.Threads, Sessions: 1, ORTLib: cfg.Model.ORTLibrary, NoArena: true}})
			if err != nil {
				b.Close()
				return nil, nil, err
			}
			return c, func() { c.Close(); b.Close() }, nil
		},
		Golden: rollout.Golden{Dir: cfg.Rollout.Golden, MinAccuracy: cfg.Rollout.MinAccuracy, MinSensitivity: cfg.Rollout.MinSensitivity},
		Ready:  r.startShadow,
		Events: r.onEvent,
		Log:    deps.log,
		Now:    deps.now,
	})
	if err != nil {
		return nil, err
	}
	r.last = rollout.Event{Stage: rollout.StageIdle, Version: r.slots.Champion().Version, At: deps.now().UTC()}
	return r, nil
}

func inferenceSidecar(dir string) string { return PlausibilitySidecar(dir) }

// copySidecar copies bundle's plausibility sidecar, when it has one, to
// beside slot.
func copySidecar(bundle, slot string) error {
	raw, err := os.ReadFile(PlausibilitySidecar(bundle))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return os.WriteFile(PlausibilitySidecar(slot), raw, 0o644)
}

func (r *rolloutLink) slotPath(name string) string { return filepath.Join(r.dir, name) }

// ServingPath is the slot the pointer names, resolved: the gate finds a
// slot's sidecar beside the slot, not beside the pointer.
func (r *rolloutLink) ServingPath() string { return r.slotPath(r.slots.Champion().Name) }

// start runs the taker.
func (r *rolloutLink) start() { r.taker.Start() }

// close stops the taker and unloads a candidate in shadow.
func (r *rolloutLink) close(ctx context.Context) error {
	err := r.taker.Close(ctx)
	r.mu.Lock()
	s := r.shadow
	r.shadow = nil
	r.mu.Unlock()
	if s != nil {
		s.model.Close()
	}
	return err
}

// subscribe is called on every MQTT connection.
func (r *rolloutLink) subscribe(c mqtt.Client) {
	if err := r.taker.Subscribe(c); err != nil {
		r.log.Warn("model offers: subscribe failed; retried at the next connection", "err", err)
	}
}

func (r *rolloutLink) onEvent(e rollout.Event) {
	r.mu.Lock()
	r.last = e
	r.mu.Unlock()
	ctx := context.Background()
	switch e.Stage {
	case rollout.StageRefused:
		r.alert(ctx, "model_refused", fmt.Sprintf("candidate %s refused: %s", e.Version, e.Detail))
	case rollout.StageDownloading:
		// A newer offer replaces a candidate in shadow.
		r.stopShadow(fmt.Sprintf("superseded by the offer of %s", e.Version))
		r.journal(ctx, "info", "model_"+e.Stage, fmt.Sprintf("%s: %s", e.Version, e.Detail))
	default:
		r.journal(ctx, "info", "model_"+e.Stage, fmt.Sprintf("%s: %s", e.Version, e.Detail))
	}
	r.metrics.rolloutStage.Reset()
	r.metrics.rolloutStage.WithLabelValues(e.Stage, e.Version).Set(1)
	if r.changed != nil {
		r.changed()
	}
}

// startShadow loads a candidate that passed the golden set beside the
// champion. A candidate without a plausibility reference is refused when
// the champion has one: promoting it would let images that are not blood
// cells get a class again.
func (r *rolloutLink) startShadow(c rollout.Candidate) error {
	cfg := r.config()
	cfg.Model.Path = c.Dir
	m, err := r.open(cfg, r.log)
	if err != nil {
		return fmt.Errorf("does not load beside the serving model: %w", err)
	}
	if r.champGated != nil && r.champGated() && !gated(m) {
		m.Close()
		return errors.New("its bundle has no plausibility reference and the serving model's has one: it would classify images that are not blood cells")
	}
	s := &shadowRun{cand: c, model: m, since: r.now(), slides: map[string]*shadowSlide{}}
	if bs, ok := m.(baselineSource); ok && bs.BaselinePath() != "" {
		// The candidate's own monitor, calibrated as shipped: its scores
		// on live cells against its own test set.
		if b, err := drift.LoadBaseline(bs.BaselinePath()); err == nil {
			if s.mon, err = drift.NewMonitor(b); err != nil {
				r.log.Warn("shadow: the candidate's drift monitor is unavailable", "err", err)
			}
		}
	}
	r.mu.Lock()
	old := r.shadow
	r.shadow = s
	r.mu.Unlock()
	if old != nil {
		old.model.Close()
	}
	r.log.Info("candidate in shadow", "candidate", c.Version, "share", cfg.Rollout.Shadow.Share, "slides", cfg.Rollout.Shadow.Slides)
	return nil
}

// gatedModel is an analyzer that can say whether its plausibility gate
// has a reference.
type gatedModel interface{ HasPlausibility() bool }

func gated(a analyzer) bool {
	g, ok := a.(gatedModel)
	return ok && g.HasPlausibility()
}

// stopShadow unloads the candidate in shadow, if any.
func (r *rolloutLink) stopShadow(why string) {
	r.mu.Lock()
	s := r.shadow
	r.shadow = nil
	r.mu.Unlock()
	if s != nil {
		r.log.Info("shadow stopped", "candidate", s.cand.Version, "why", why)
		s.model.Close()
	}
}

// shadowImage is called by a worker after the champion classified an
// image: for a share of images the candidate classifies it too, and the
// two are compared cell by cell. Only the champion's result is reported.
func (r *rolloutLink) shadowImage(ctx context.Context, slide string, data []byte, kind string, champ analysis, champDur time.Duration) {
	r.mu.Lock()
	s := r.shadow
	take := s != nil && r.rng.Float64() < r.config().Rollout.Shadow.Share
	r.mu.Unlock()
	if !take {
		return
	}
	start := time.Now()
	cand, err := s.model.Analyze(ctx, data, kind)
	dur := time.Since(start)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.shadow != s {
		return // replaced or stopped meanwhile
	}
	if err != nil {
		s.failed++
		return
	}
	byBox := map[[4]int]cellResult{}
	for _, c := range cand.Cells {
		byBox[[4]int{c.Box.Min.X, c.Box.Min.Y, c.Box.Max.X, c.Box.Max.Y}] = c
	}
	sl := s.slides[slide]
	if sl == nil {
		sl = &shadowSlide{}
		s.slides[slide] = sl
	}
	s.images++
	s.champNS += champDur.Nanoseconds()
	s.candNS += dur.Nanoseconds()
	for _, c := range champ.Cells {
		// The same segmentation runs in both, so a field's cells pair by
		// box; a cell only one model kept (the other's gate refused it)
		// is not compared.
		k, ok := byBox[[4]int{c.Box.Min.X, c.Box.Min.Y, c.Box.Max.X, c.Box.Max.Y}]
		if !ok {
			continue
		}
		s.cells++
		sl.cells++
		if k.Parasitized == c.Parasitized {
			s.agree++
		}
		if c.Parasitized {
			sl.champPos++
		}
		if k.Parasitized {
			sl.candPos++
		}
		if s.mon != nil {
			o := observation(k)
			if !s.mon.UsesFeatures() {
				o.Features = nil
			}
			evs, err := s.mon.Observe(o)
			if err != nil {
				continue
			}
			for _, ev := range evs {
				// Focus describes the images, which both models share: it
				// says nothing about the candidate.
				if ev.Level == drift.LevelAlarm && ev.Phase != drift.PhaseEnd && ev.Signal != drift.SignalFocus {
					s.alarms = append(s.alarms, fmt.Sprintf("%s on the last %d cells at cell %d", ev.Signal, ev.Window, ev.Index))
				}
			}
		}
	}
	r.metrics.shadowCells.Add(float64(len(champ.Cells)))
}

// slideDone is called when a slide completes: its shadowed cells become
// one slide of evidence, and the decision is made once there are enough;
// a promoted model's watch counts the slide's cells.
func (r *rolloutLink) slideDone(slide string, cells int) {
	cfg := r.config().Rollout
	r.mu.Lock()
	if w := r.watch; w != nil {
		w.cells += cells
		if w.cells >= cfg.WatchCells {
			r.log.Info("promoted model passed its watch", "model", w.version, "cells", w.cells)
			r.watch = nil
		}
	}
	s := r.shadow
	if s == nil {
		r.mu.Unlock()
		return
	}
	if sl := s.slides[slide]; sl != nil && sl.cells > 0 {
		delete(s.slides, slide)
		s.done = append(s.done, shadowSlideResult{Slide: slide, Cells: sl.cells,
			Champion: 100 * float64(sl.champPos) / float64(sl.cells), Candidate: 100 * float64(sl.candPos) / float64(sl.cells)})
	}
	ready := len(s.done) >= cfg.Shadow.Slides && s.cells >= cfg.Shadow.MinCells
	if ready {
		r.shadow = nil
	}
	r.mu.Unlock()
	if ready {
		r.decide(s)
	}
}

// evidence summarises a shadow run (called with the run detached or mu
// held).
func (s *shadowRun) evidence() ShadowEvidence {
	e := ShadowEvidence{Candidate: s.cand.Version, Images: s.images, Cells: s.cells, Slides: append([]shadowSlideResult(nil), s.done...),
		DriftAlarms: append([]string(nil), s.alarms...), Failed: s.failed}
	if s.cells > 0 {
		e.Agreement = float64(s.agree) / float64(s.cells)
	}
	if s.champNS > 0 {
		e.LatencyRatio = float64(s.candNS) / float64(s.champNS)
	}
	return e
}

// judge applies the promotion rules; it returns the broken ones.
func judge(e ShadowEvidence, rules config.Shadow) []string {
	var broken []string
	if e.Cells == 0 || !(1-e.Agreement <= rules.MaxDisagreement) {
		broken = append(broken, fmt.Sprintf("labels %.1f%% of %d shadowed cells differently from the serving model (at most %.1f%%)", 100*(1-e.Agreement), e.Cells, 100*rules.MaxDisagreement))
	}
	for _, s := range e.Slides {
		if d := math.Abs(s.Candidate - s.Champion); d > rules.MaxParasitemiaDiff {
			broken = append(broken, fmt.Sprintf("slide %s: parasitemia %.2f%% against %.2f%% on the same %d cells (at most %g points apart)", s.Slide, s.Candidate, s.Champion, s.Cells, rules.MaxParasitemiaDiff))
		}
	}
	if e.Images == 0 || !(e.LatencyRatio <= rules.MaxLatencyRatio) {
		broken = append(broken, fmt.Sprintf("takes %.2fx the serving model's time per image (at most %.2fx)", e.LatencyRatio, rules.MaxLatencyRatio))
	}
	if len(e.DriftAlarms) > 0 {
		broken = append(broken, fmt.Sprintf("its drift monitor alarmed against its own baseline: %s", strings.Join(e.DriftAlarms, "; ")))
	}
	if e.Failed > 0 {
		broken = append(broken, fmt.Sprintf("failed on %d images the serving model classified", e.Failed))
	}
	return broken
}

// decide promotes or refuses a candidate whose shadow run is complete.
func (r *rolloutLink) decide(s *shadowRun) {
	cfg := r.config()
	ev := s.evidence()
	evJSON, _ := json.Marshal(ev)
	rules := fmt.Sprintf("rules: disagreement <= %.2f, per-slide parasitemia difference <= %g points, latency ratio <= %.2f, no drift alarm of the candidate on its scores or features, no failures",
		cfg.Rollout.Shadow.MaxDisagreement, cfg.Rollout.Shadow.MaxParasitemiaDiff, cfg.Rollout.Shadow.MaxLatencyRatio)
	s.model.Close()
	if broken := judge(ev, cfg.Rollout.Shadow); len(broken) > 0 {
		r.slots.Discard()
		r.onEvent(rollout.Event{Stage: rollout.StageRefused, Version: s.cand.Version, At: r.now().UTC(),
			Detail: fmt.Sprintf("in shadow: %s (%s; evidence %s)", strings.Join(broken, "; "), rules, evJSON)})
		return
	}
	champion := r.slots.Champion().Version
	if _, err := r.slots.Promote(); err != nil {
		r.onEvent(rollout.Event{Stage: rollout.StageRefused, Version: s.cand.Version, Detail: fmt.Sprintf("promotion failed: %v", err), At: r.now().UTC()})
		return
	}
	if err := r.serve(r.ServingPath()); err != nil {
		// The pointer moved but the new model does not load: back at once.
		r.log.Error("the promoted model does not load; rolling back", "model", s.cand.Version, "err", err)
		r.rollback(context.Background(), fmt.Sprintf("the promoted model did not load: %v", err))
		return
	}
	r.mu.Lock()
	if cfg.Rollout.WatchCells > 0 {
		r.watch = &promotionWatch{version: s.cand.Version}
	}
	r.mu.Unlock()
	detail := fmt.Sprintf("%s promoted over %s after shadow on %d cells of %d slides: agreement %.4f, latency ratio %.2f (%s; evidence %s)",
		s.cand.Version, champion, ev.Cells, len(ev.Slides), ev.Agreement, ev.LatencyRatio, rules, evJSON)
	r.alert(context.Background(), "model_promoted", detail)
	r.onEvent(rollout.Event{Stage: rollout.StagePromoted, Version: s.cand.Version, Detail: detail, At: r.now().UTC()})
}

// driftAlarm is called with every drift event of the serving model: an
// alarm on its scores or features while a promotion is watched rolls it
// back.
func (r *rolloutLink) driftAlarm(ev drift.Event, model string) {
	if ev.Level != drift.LevelAlarm || ev.Phase == drift.PhaseEnd || ev.Signal == drift.SignalFocus {
		return
	}
	r.mu.Lock()
	w := r.watch
	if w == nil || w.version != model {
		r.mu.Unlock()
		return
	}
	r.watch = nil
	r.mu.Unlock()
	r.rollback(context.Background(), fmt.Sprintf("%s alarmed (%s, statistic %.4g > %.4g on the last %d cells) within its first %d cells after promotion",
		model, ev.Signal, ev.Statistic, ev.Threshold, ev.Window, r.config().Rollout.WatchCells))
}

// rollback returns to the previous slot. why is an operator's request or
// the automatic rule that fired.
func (r *rolloutLink) rollback(ctx context.Context, why string) (rollout.Slot, error) {
	left := r.slots.Champion().Version
	r.stopShadow("rollback")
	slot, err := r.slots.Rollback()
	if err != nil {
		return slot, err
	}
	r.mu.Lock()
	r.watch = nil
	r.mu.Unlock()
	if err := r.serve(r.ServingPath()); err != nil {
		return slot, fmt.Errorf("rolled back to %s, which does not load: %w", slot.Version, err)
	}
	detail := fmt.Sprintf("rolled back from %s to %s: %s", left, slot.Version, why)
	r.alert(ctx, "model_rolled_back", detail)
	r.onEvent(rollout.Event{Stage: rollout.StageRolledBack, Version: slot.Version, Detail: detail, At: r.now().UTC()})
	return slot, nil
}

// modelState is GET /v1/model.
type modelState struct {
	Champion  rollout.Slot    `json:"champion"`
	Previous  *rollout.Slot   `json:"previous,omitempty"`
	Candidate *rollout.Slot   `json:"candidate,omitempty"`
	Floor     string          `json:"floor"`
	Stage     string          `json:"stage"`
	Last      rollout.Event   `json:"last"`
	Shadow    *ShadowEvidence `json:"shadow,omitempty"`
	Watching  string          `json:"watching,omitempty"`
}

func (r *rolloutLink) state() modelState {
	st := modelState{Champion: r.slots.Champion(), Previous: r.slots.Previous(), Candidate: r.slots.Staged(), Floor: r.slots.Floor()}
	r.mu.Lock()
	defer r.mu.Unlock()
	st.Last, st.Stage = r.last, r.last.Stage
	if r.shadow != nil {
		e := r.shadow.evidence()
		st.Shadow = &e
	}
	if r.watch != nil {
		st.Watching = r.watch.version
	}
	return st
}

// status is the rollout's part of the retained status.
func (r *rolloutLink) status() *statusRollout {
	st := r.state()
	out := &statusRollout{Stage: st.Stage, Version: st.Last.Version}
	if st.Candidate != nil {
		out.Candidate = st.Candidate.Version
	}
	if st.Previous != nil {
		out.Previous = st.Previous.Version
	}
	return out
}

// trustedKeys loads the keys bundles must be signed by (model.keys).
func trustedKeys(cfg config.Config) ([]ed25519.PublicKey, error) {
	keysPath := cfg.Model.Keys
	if keysPath == "" {
		keysPath = inference.DefaultKeysPath()
	}
	if keysPath == "" {
		return nil, nil
	}
	keys, err := inference.LoadPublicKeys(keysPath)
	if err != nil {
		return nil, fmt.Errorf("model.keys: %w", err)
	}
	return keys, nil
}
