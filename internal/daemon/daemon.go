package daemon

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	systemd "github.com/coreos/go-systemd/v22/daemon"

	"github.com/scopewatch/scopewatch/feedback"
	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/store"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// cellResult is one classified cell: its box in the image (the whole image
// for a crop), p(parasitized) and the label at the current threshold.
type cellResult struct {
	Box         image.Rectangle
	P           float64
	Label       string
	Parasitized bool
	// Features are the backbone's features when the embedding drift
	// detector needs them (crops only), else nil.
	Features []float32
	// Focus is the crop's sharpness (inference.Result.Focus) for the focus
	// drift detector.
	Focus float64
	// Appearance is a crop's inference.Appearance.Values, for the slide
	// quality gate (nil for field cells: the gate's reference is made of
	// crops).
	Appearance []float64
}

// analysis is what the model made of one image.
type analysis struct {
	Kind          string // crop or field
	Width, Height int
	Cells         []cellResult
	// Rejected are a field's segmented cells the plausibility gate refused:
	// not classified, not counted.
	Rejected []rejectedCell
}

// rejectedCell is a segmented cell refused by the plausibility gate.
type rejectedCell struct {
	Box    image.Rectangle
	Check  string // the statistic that failed (metric label)
	Reason string // "rejected: <statistic> <value> outside ..."
}

// analyzer turns image bytes into classified cells. kind is auto, crop or
// field. Bad input is reported as a *badImageError.
type analyzer interface {
	Analyze(ctx context.Context, data []byte, kind string) (analysis, error)
	ModelVersion() string
	// SetThreshold changes the decision threshold; 0 restores the manifest's.
	SetThreshold(t float64)
	Close() error
}

// badImageError is an image the daemon refuses (quarantined, 4xx): Reason
// is a short metric label (empty, not_image, too_large, truncated,
// corrupt, unsupported, no_cells), Err the detailed cause.
type badImageError struct {
	// Check is the plausibility check that refused it (Reason
	// "implausible"), "" otherwise.
	Check  string
	Reason string
	Err    error
}

func (e *badImageError) Error() string { return e.Err.Error() }
func (e *badImageError) Unwrap() error { return e.Err }

// job is one image to process.
type job struct {
	slide, name, source string
	kind                string // "" means the configured kind
	data                []byte
	// path, when data is nil, is read by the worker: queued inbox files
	// cost no memory until their turn.
	path     string
	enqueued time.Time
	// done receives the outcome; it must not block (buffered or a func).
	done func(jobResult)
}

type jobResult struct {
	an     analysis
	stored storedImage
	err    error
}

// Daemon is `scopewatch serve`: ingestion, analysis, storage, MQTT and the
// operations endpoints. Run owns every goroutine it starts.
type Daemon struct {
	log      *slog.Logger
	level    *slog.LevelVar
	now      func() time.Time
	model    *swappableModel
	open     func(config.Config, *slog.Logger) (analyzer, error)
	db       *dbStore
	metrics  *serveMetrics
	cfgMu    sync.RWMutex
	cfg      config.Config
	boot     int64
	queue    chan job
	mq       *mqttLink
	inbox    *inbox
	drift    *driftWatch   // nil when drift.enabled is false
	fb       *feedbackLink // nil when feedback.enabled is false
	ro       *rolloutLink  // nil when rollout.enabled is false
	ready    atomic.Bool
	degraded sync.Map // reason -> detail
	lastBeat atomic.Int64
	httpAddr chan string
	topics   map[mqttconn.Kind]string
	// firstImage releases the library pages that only the first image's
	// lazy initialisation (codecs, OpenCV's dispatch) used.
	firstImage sync.Once
}

// daemonDeps are the parts created outside (tests inject a clock).
type daemonDeps struct {
	Log   *slog.Logger
	Level *slog.LevelVar
	Now   func() time.Time
	Model analyzer
	// Random makes the database's instance id; nil: crypto/rand.
	Random io.Reader
	// OpenModel loads a model for a reload (SIGHUP); nil disables model
	// reloading.
	OpenModel func(config.Config, *slog.Logger) (analyzer, error)
	// Rollout is the model rollout (rollout.enabled): its slots hold the
	// model the daemon serves.
	Rollout *rolloutLink
}

// New opens the configured model and builds the daemon of cfg; Run starts
// it. log and level are the caller's (level follows log.level on Reload).
func New(ctx context.Context, cfg config.Config, log *slog.Logger, level *slog.LevelVar) (*Daemon, error) {
	applyMallocLimits(log)
	// Library pages only the start needed go back to the kernel: those of
	// the dynamic loader and constructors now, those of building the ONNX
	// Runtime session when the model is loaded (openAnalyzer).
	releaseStartPages(cfg, log, "start")
	var ro *rolloutLink
	if cfg.Rollout.Enabled {
		var seed [8]byte
		if _, err := cryptorand.Read(seed[:]); err != nil {
			return nil, err
		}
		var err error
		ro, err = newRolloutLink(rolloutDeps{log: log, now: time.Now, open: openAnalyzer, seed: binary.LittleEndian.Uint64(seed[:])}, cfg)
		if err != nil {
			return nil, fmt.Errorf("rollout: %w", err)
		}
		// The daemon serves the slot the pointer names, not model.path
		// (copied into the slots at the first start).
		cfg.Model.Path = ro.ServingPath()
	}
	model, err := openAnalyzer(cfg, log)
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w", cfg.Model.Path, err)
	}
	d, err := newDaemon(ctx, cfg, daemonDeps{Log: log, Level: level, Model: model, OpenModel: openAnalyzer, Rollout: ro})
	if err != nil {
		model.Close()
		return nil, err
	}
	return d, nil
}

func newDaemon(ctx context.Context, cfg config.Config, deps daemonDeps) (*Daemon, error) {
	rollout := deps.Rollout
	if deps.Now == nil {
		deps.Now = time.Now
	}
	d := &Daemon{
		log:      deps.Log,
		level:    deps.Level,
		now:      deps.Now,
		model:    &swappableModel{cur: deps.Model},
		open:     deps.OpenModel,
		cfg:      cfg,
		queue:    make(chan job, cfg.Images.QueueSize),
		httpAddr: make(chan string, 1),
	}
	topics, err := deviceTopics(cfg)
	if err != nil {
		return nil, err
	}
	d.topics = topics
	sqlDB, err := openServeDB(ctx, cfg.Database)
	if err != nil {
		return nil, err
	}
	d.metrics = newServeMetrics()
	var outbox *feedback.Outbox
	if cfg.MQTT.Enabled {
		// The outbox's tables are in the database just opened, so a
		// failure here is the database's: the daemon does not start rather
		// than count slides whose results it could not send.
		outbox, err = feedback.NewOutbox(ctx, sqlDB, feedback.OutboxConfig{
			AlertTopic: d.topic(mqttconn.KindAlert), Site: cfg.Site, Device: cfg.Device, Now: d.now, Log: d.log, Metrics: d.metrics.outbox,
		})
		if err != nil {
			sqlDB.Close()
			return nil, err
		}
	}
	var out txOutbox
	if outbox != nil {
		out = outbox
	}
	random := deps.Random
	if random == nil {
		random = cryptorand.Reader
	}
	db, err := newDBStore(ctx, sqlDB, deps.Now, out, random)
	if err != nil {
		sqlDB.Close()
		return nil, err
	}
	d.db = db
	if d.boot, err = db.nextBoot(ctx); err != nil {
		db.Close()
		return nil, err
	}
	d.metrics.modelInfo.WithLabelValues(d.model.ModelVersion()).Set(1)
	if cfg.Inbox.Enabled {
		d.inbox = newInbox(inboxDeps{log: d.log, config: d.config, now: d.now, metrics: d.metrics,
			submit: d.submit, completeSlide: d.completeSlide, hasImage: db.hasImage, attempts: db})
	}
	if cfg.Drift.Enabled {
		d.drift = newDriftWatch(driftDeps{log: d.log, config: d.config, metrics: d.metrics, store: db, serving: d.model, raise: d.driftEvent}, cfg.Drift)
	}
	if outbox != nil {
		deps := mqttDeps{log: d.log, config: d.config, now: d.now, metrics: d.metrics, instance: db.instance, boot: d.boot, topic: d.topic,
			modelVersion: d.model.ModelVersion, statusState: d.statusState, setDegraded: d.setDegraded}
		if cfg.Feedback.Enabled {
			fd := feedbackDeps{log: d.log, config: d.config, now: d.now, metrics: d.metrics, boot: d.boot, db: sqlDB, store: db,
				drift: d.drift, modelVersion: d.model.ModelVersion(), threshold: d.model.threshold()}
			if d.fb, err = newFeedbackLink(ctx, fd, cfg, outbox); err != nil {
				db.Close()
				return nil, fmt.Errorf("feedback: %w", err)
			}
			deps.subscribe = d.fb.subscribe
		}
		if ro := rollout; ro != nil {
			d.ro = ro
			ro.config, ro.metrics, ro.alert, ro.serve, ro.champGated = d.config, d.metrics, d.alert, d.serveModel, d.model.gated
			ro.journal = func(ctx context.Context, level, kind, detail string) { d.db.event(ctx, level, kind, "", detail) }
			deps.rollout = ro.status
			labels := deps.subscribe
			deps.subscribe = func(ctx context.Context, c mqtt.Client) {
				if labels != nil {
					labels(ctx, c)
				}
				ro.subscribe(c)
			}
		}
		d.mq = newMQTTLink(deps, outbox)
		if d.ro != nil {
			d.ro.changed = d.mq.publishStatus
		}
	}
	return d, nil
}

func (d *Daemon) config() config.Config {
	d.cfgMu.RLock()
	defer d.cfgMu.RUnlock()
	return d.cfg
}

// Run serves until ctx is cancelled, then shuts down within
// shutdown.timeout: intake stops, queued images are finished, the status
// goes offline, the database is checkpointed and closed.
func (d *Daemon) Run(ctx context.Context) error {
	cfg := d.config()
	defer d.db.Close()
	defer d.model.Close()

	var ln net.Listener
	if cfg.HTTP.Enabled {
		var err error
		ln, err = net.Listen("tcp", cfg.HTTP.Listen)
		if err != nil {
			return fmt.Errorf("http listen %s: %w", cfg.HTTP.Listen, err)
		}
		d.httpAddr <- ln.Addr().String()
	}

	intakeCtx, stopIntake := context.WithCancel(context.Background())
	defer stopIntake()
	var intake, workers, bg sync.WaitGroup

	// Workers finish everything queued even after ctx is cancelled; they
	// stop when the queue is closed (after intake stopped).
	for i := 0; i < cfg.Images.Workers; i++ {
		workers.Add(1)
		go func() { defer workers.Done(); d.worker() }()
	}

	bgCtx, stopBG := context.WithCancel(context.Background())
	defer stopBG()
	if d.mq != nil {
		bg.Add(1)
		go func() { defer bg.Done(); d.mq.run(bgCtx) }()
	}
	bg.Add(1)
	go func() { defer bg.Done(); d.housekeeping(bgCtx) }()
	if d.drift != nil {
		// Stopped with the background work, after the workers: its last
		// save holds every cell.
		bg.Add(1)
		go func() { defer bg.Done(); d.drift.run(bgCtx) }()
	}
	if d.ro != nil {
		d.ro.start()
		bg.Add(1)
		go func() {
			defer bg.Done()
			<-bgCtx.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := d.ro.close(ctx); err != nil {
				d.log.Warn("stopping the model rollout", "err", err)
			}
		}()
	}

	var srv *http.Server
	if ln != nil {
		srv = &http.Server{
			Handler:           d.httpHandler(),
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       cfg.HTTP.ReadTimeout,
			WriteTimeout:      cfg.HTTP.WriteTimeout,
			ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
		}
		intake.Add(1)
		go func() {
			defer intake.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("http server stopped", "err", err)
			}
		}()
	}
	if d.inbox != nil {
		if err := d.inbox.prepare(); err != nil {
			stopIntake()
			if srv != nil {
				srv.Close()
			}
			close(d.queue)
			workers.Wait()
			stopBG()
			bg.Wait()
			return err
		}
		intake.Add(1)
		go func() { defer intake.Done(); d.inbox.run(intakeCtx) }()
	}
	if cfg.Camera.Enabled {
		intake.Add(1)
		go func() { defer intake.Done(); d.runCamera(intakeCtx, openCapture) }()
	}

	d.ready.Store(true)
	d.beat()
	d.log.Info("scopewatch serving", "model", d.model.ModelVersion(), "boot", d.boot,
		"http", addrOf(ln), "inbox", cfg.Inbox.Dir, "database", cfg.Database, "mqtt", cfg.MQTT.Enabled)
	if ok, err := systemd.SdNotify(false, systemd.SdNotifyReady+"\nSTATUS=serving"); err != nil {
		d.log.Warn("sd_notify ready failed", "err", err)
	} else if ok {
		d.log.Debug("notified systemd: ready")
	}

	d.watchdogLoop(ctx)

	// Shutdown.
	d.ready.Store(false)
	if _, err := systemd.SdNotify(false, systemd.SdNotifyStopping+"\nSTATUS=stopping"); err != nil {
		d.log.Warn("sd_notify stopping failed", "err", err)
	}
	timeout := d.config().Shutdown.Timeout
	d.log.Info("shutting down", "bound", timeout.String())
	deadline := time.Now().Add(timeout)
	shutCtx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	stopIntake()
	if srv != nil {
		// In-flight uploads are waiting on their images; Shutdown lets
		// them finish (workers are still running).
		if err := srv.Shutdown(shutCtx); err != nil {
			d.log.Warn("http shutdown", "err", err)
		}
	}
	intake.Wait()
	close(d.queue)
	done := make(chan struct{})
	go func() { workers.Wait(); close(done) }()
	select {
	case <-done:
	case <-shutCtx.Done():
		d.log.Error("shutdown bound reached with images still queued; they are re-read from the inbox on restart", "queued", len(d.queue))
	}
	// Give the outbox a moment to flush what the last images produced.
	if d.mq != nil {
		d.mq.flush(shutCtx)
	}
	stopBG()
	bgDone := make(chan struct{})
	go func() { bg.Wait(); close(bgDone) }()
	select {
	case <-bgDone:
	case <-shutCtx.Done():
	}
	if err := store.Checkpoint(context.Background(), d.db.db); err != nil {
		d.log.Warn("final checkpoint", "err", err)
	}
	d.log.Info("stopped")
	return nil
}

func addrOf(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}

// watchdogLoop pings systemd's watchdog at half its interval while the
// workers are alive, until ctx is cancelled. A worker stuck for longer than
// the watchdog interval stops the pings, and systemd restarts the service.
func (d *Daemon) watchdogLoop(ctx context.Context) {
	interval, err := systemd.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if d.workersAlive(interval) {
				systemd.SdNotify(false, systemd.SdNotifyWatchdog)
			} else {
				d.log.Error("a worker is stuck; withholding the watchdog ping")
			}
		}
	}
}

// beat records that a worker made progress (or is idle).
func (d *Daemon) beat() { d.lastBeat.Store(d.now().UnixNano()) }

func (d *Daemon) workersAlive(limit time.Duration) bool {
	// An idle worker beats on every queue poll; a busy one after each image.
	return d.now().Sub(time.Unix(0, d.lastBeat.Load())) < limit
}

// worker processes queued images until the queue is closed.
func (d *Daemon) worker() {
	idle := time.NewTicker(time.Second)
	defer idle.Stop()
	for {
		select {
		case j, ok := <-d.queue:
			if !ok {
				return
			}
			d.metrics.queueDepth.Set(float64(len(d.queue)))
			r := d.process(j)
			if j.done != nil {
				j.done(r)
			}
			d.beat()
		case <-idle.C:
			d.beat()
		}
	}
}

// submit queues a job; it fails at once when the queue is full.
func (d *Daemon) submit(j job) bool {
	j.enqueued = d.now()
	select {
	case d.queue <- j:
		d.metrics.queueDepth.Set(float64(len(d.queue)))
		return true
	default:
		return false
	}
}

// process analyses and stores one image. It never panics on bad input:
// errors come back in the result.
func (d *Daemon) process(j job) (r jobResult) {
	cfg := d.config()
	start := d.now()
	d.metrics.queueWait.Observe(start.Sub(j.enqueued).Seconds())
	kind := j.kind
	if kind == "" {
		kind = cfg.Images.Kind
	}
	ctx := context.Background()
	if j.data == nil && j.path != "" {
		data, err := os.ReadFile(j.path)
		if err != nil {
			d.metrics.errors.WithLabelValues("read").Inc()
			d.metrics.images.WithLabelValues(j.source, "failed").Inc()
			return jobResult{err: fmt.Errorf("read %s: %w", j.path, err)}
		}
		j.data = data
	}
	an, err := d.model.Analyze(ctx, j.data, kind)
	d.countRejected(an)
	if err != nil {
		var bad *badImageError
		if errors.As(err, &bad) {
			if bad.Check != "" {
				d.metrics.implausible.WithLabelValues("crop", bad.Check).Inc()
			}
			d.metrics.errors.WithLabelValues(bad.Reason).Inc()
			d.metrics.images.WithLabelValues(j.source, "rejected").Inc()
		} else {
			d.metrics.errors.WithLabelValues("analyze").Inc()
			d.metrics.images.WithLabelValues(j.source, "failed").Inc()
		}
		d.db.event(ctx, "warn", "image_rejected", j.slide, fmt.Sprintf("%s: %v", j.name, err))
		if bad != nil && j.slide != "" {
			// The slide's verdict weighs what it could not count.
			if err := d.db.recordRefused(ctx, j.slide); err != nil {
				d.log.Error("counting a refused image failed", "slide", j.slide, "err", err)
			}
		}
		return jobResult{err: err}
	}
	analysed := d.now()
	d.firstImage.Do(func() { releaseStartPages(cfg, d.log, "first image") })
	d.metrics.analyzeSeconds.WithLabelValues(an.Kind).Observe(analysed.Sub(start).Seconds())
	stored, err := d.db.recordImage(ctx, imageRecord{
		Slide: j.slide, Name: j.name, Source: j.source, Kind: an.Kind,
		Width: an.Width, Height: an.Height, Cells: an.Cells, ModelVersion: d.model.ModelVersion(), Path: j.path,
		Sparse: an.Kind == "field" && len(an.Cells) < cfg.Slides.MinFieldCells, Flagged: d.drift.openEpisode(),
	}, cfg.Slides.TargetCells, d.summarise)
	switch {
	case errors.Is(err, errSlideComplete), errors.Is(err, errDuplicateImage):
		d.metrics.images.WithLabelValues(j.source, "skipped").Inc()
		return jobResult{an: an, stored: stored, err: err}
	case err != nil:
		d.metrics.errors.WithLabelValues("store").Inc()
		d.metrics.images.WithLabelValues(j.source, "failed").Inc()
		d.log.Error("storing image failed", "slide", j.slide, "image", j.name, "err", err)
		return jobResult{an: an, err: err}
	}
	d.metrics.images.WithLabelValues(j.source, "ok").Inc()
	infected := 0
	for _, c := range an.Cells {
		if c.Parasitized {
			infected++
		}
	}
	if d.drift != nil {
		d.drift.observe(ctx, an.Cells)
	}
	if d.fb != nil {
		d.fb.offer(ctx, j.slide, j.data, an)
	}
	if d.ro != nil {
		d.ro.shadowImage(ctx, j.slide, j.data, kind, an, analysed.Sub(start))
	}
	d.metrics.cells.WithLabelValues("parasitized").Add(float64(infected))
	d.metrics.cells.WithLabelValues("uninfected").Add(float64(len(an.Cells) - infected))
	d.metrics.processSeconds.WithLabelValues(an.Kind).Observe(d.now().Sub(start).Seconds())
	d.log.Debug("image processed", "slide", j.slide, "image", j.name, "kind", an.Kind, "cells", len(an.Cells), "infected", infected,
		"ms", d.now().Sub(start).Milliseconds())
	if stored.Completed != nil {
		d.slideCompleted(ctx, *stored.Completed)
	}
	return jobResult{an: an, stored: stored}
}

// countRejected counts a field's cells refused by the plausibility gate.
func (d *Daemon) countRejected(an analysis) {
	for _, c := range an.Rejected {
		d.metrics.implausible.WithLabelValues("field", c.Check).Inc()
	}
}

// summarise builds a slide's summary and its outbox record; it runs inside
// the completing transaction.
func (d *Daemon) summarise(sl slideRow, reason string) (slideSummary, []feedback.Record) {
	cfg := d.config()
	verdict, reasons := slideVerdict(sl, cfg.Slides)
	s := slideSummary{
		Schema: resultSchema, ID: sl.ResultID, Site: cfg.Site, Device: cfg.Device, Slide: sl.Slide, State: "complete",
		Verdict: verdict, Reasons: reasons, Images: sl.Images, Refused: sl.Refused, Fields: sl.Fields, SparseFields: sl.SparseFields,
		Cells: sl.Cells, Infected: sl.Infected, CIMethod: cfg.Slides.CI, CILevel: 0.95,
		StoppingReason: reason, ModelVersion: sl.ModelVersion, StartedAt: sl.CreatedAt, CompletedAt: sl.CompletedAt, Boot: d.boot,
	}
	if verdict != verdictInconclusive {
		lo, hi := proportionCI(sl.Infected, sl.Cells, cfg.Slides.CI)
		pct, l, h := 100*float64(sl.Infected)/float64(sl.Cells), 100*lo, 100*hi
		s.ParasitemiaPct, s.CILowPct, s.CIHighPct = &pct, &l, &h
	}
	if s.ModelVersion == "" {
		s.ModelVersion = d.model.ModelVersion()
	}
	if d.drift != nil {
		if b := d.drift.baselineFor(s.ModelVersion); b != nil {
			s.Estimate = newSlideEstimate(b.EstimateSlide(sl.Scores, d.model.threshold()))
			if b.SlideQuality != nil {
				s.Quality = judgeQuality(b.SlideQuality, sl)
				for _, f := range s.Quality.Flags {
					// The count stands (the cells passed the plausibility
					// gate), with the caveat that the slide is unlike any
					// the model was validated on.
					s.Reasons = append(s.Reasons, f.Message)
					if s.Verdict == verdictOK {
						s.Verdict = verdictFlagged
					}
				}
			}
		}
	}
	if !cfg.MQTT.Enabled {
		return s, nil
	}
	payload, err := json.Marshal(s)
	if err != nil {
		// Every field is a plain number or string; this cannot happen
		// unless a non-finite value got in, which must not go unseen.
		d.log.Error("encoding the slide result failed; it is kept in the database only", "slide", s.Slide, "err", err)
		return s, nil
	}
	return s, []feedback.Record{{ID: "result/" + s.ID, Kind: feedback.KindResult, Topic: d.topic(mqttconn.KindResult), Payload: payload, QoS: 1}}
}

func (d *Daemon) slideCompleted(ctx context.Context, s slideSummary) {
	if d.ro != nil {
		d.ro.slideDone(s.Slide, s.Cells)
	}
	if q := s.Quality; q != nil && len(q.Flags) > 0 {
		var msgs []string
		for _, f := range q.Flags {
			msgs = append(msgs, f.Message)
			d.metrics.qualityFlags.WithLabelValues(f.Check).Inc()
		}
		d.alert(ctx, "slide_quality", strings.Join(msgs, "; "))
	}
	d.metrics.slides.WithLabelValues(s.StoppingReason).Inc()
	d.metrics.verdicts.WithLabelValues(s.Verdict).Inc()
	attrs := []any{"slide", s.Slide, "reason", s.StoppingReason, "verdict", s.Verdict, "cells", s.Cells, "infected", s.Infected, "model", s.ModelVersion}
	if s.ParasitemiaPct != nil {
		attrs = append(attrs, "parasitemia_pct", *s.ParasitemiaPct, "ci_low_pct", *s.CILowPct, "ci_high_pct", *s.CIHighPct)
	}
	if len(s.Reasons) > 0 {
		attrs = append(attrs, "why", s.Reasons)
	}
	d.log.Info("slide complete", attrs...)
}

// completeSlide completes an open slide for reason (marker, idle_timeout,
// request); ok is false when there was nothing open to complete.
func (d *Daemon) completeSlide(ctx context.Context, slide, reason string) (slideSummary, bool, error) {
	s, ok, err := d.db.completeSlide(ctx, slide, reason, d.summarise)
	if err != nil {
		d.metrics.errors.WithLabelValues("store").Inc()
		return s, false, err
	}
	if ok {
		d.slideCompleted(ctx, s)
	}
	return s, ok, nil
}

// topic is this device's topic of kind (status, alert, result); the
// config's validation made them all valid and none is reloadable, so they
// are made once, in newDaemon.
func (d *Daemon) topic(kind mqttconn.Kind) string { return d.topics[kind] }

// deviceTopics makes this device's outbound topics through mqttconn.Topics,
// the one place topics are built.
func deviceTopics(cfg config.Config) (map[mqttconn.Kind]string, error) {
	t, err := mqttconn.NewTopics(cfg.MQTT.TopicRoot)
	if err != nil {
		return nil, fmt.Errorf("mqtt.topic_root: %w", err)
	}
	out := map[mqttconn.Kind]string{}
	for _, k := range []mqttconn.Kind{mqttconn.KindStatus, mqttconn.KindAlert, mqttconn.KindResult} {
		if out[k], err = t.Device(cfg.Site, cfg.Device, k); err != nil {
			return nil, fmt.Errorf("%s topic: %w", k, err)
		}
	}
	return out, nil
}

// alert queues an alert message (sent before results) and records an event.
func (d *Daemon) alert(ctx context.Context, kind, detail string) {
	cfg := d.config()
	now := d.now().UTC()
	var recs []feedback.Record // nothing to send without MQTT
	if cfg.MQTT.Enabled {
		id := fmt.Sprintf("%s-%s-%d-%s-%d", cfg.Device, d.db.instance, d.boot, kind, now.UnixMilli())
		payload, err := json.Marshal(wire.Alert{Schema: wire.AlertSchema, ID: id, Site: cfg.Site, Device: cfg.Device,
			Kind: kind, Severity: wire.SeverityWarn, Detail: detail, ModelVersion: d.model.ModelVersion(), Boot: d.boot, At: now})
		if err != nil {
			d.log.Error("encoding the alert failed; it is recorded as an event only", "kind", kind, "err", err)
		} else {
			recs = append(recs, feedback.Record{ID: "alert/" + id, Kind: feedback.KindAlert, Topic: d.topic(mqttconn.KindAlert), Payload: payload, QoS: 1})
		}
	}
	if err := d.db.recordAlert(ctx, "warn", kind, detail, recs...); err != nil {
		d.log.Error("recording alert failed", "kind", kind, "err", err)
	}
	d.metrics.alerts.WithLabelValues(kind).Inc()
}

// setDegraded marks or clears one reason for the degraded status.
func (d *Daemon) setDegraded(reason, detail string, on bool) {
	_, was := d.degraded.Load(reason)
	if on {
		d.degraded.Store(reason, detail)
	} else {
		d.degraded.Delete(reason)
	}
	if was != on && d.mq != nil {
		d.mq.publishStatus()
	}
}

// statusState is online, or degraded with the reasons.
func (d *Daemon) statusState() (string, []string) {
	var reasons []string
	d.degraded.Range(func(k, _ any) bool { reasons = append(reasons, k.(string)); return true })
	if len(reasons) > 0 {
		return "degraded", reasons
	}
	return "online", nil
}

// Reload applies a new configuration's reloadable fields (the daemon's
// caller does it on SIGHUP), logs the fields that need a restart, and loads
// the model again if its bundle changed.
func (d *Daemon) Reload(next config.Config) {
	d.cfgMu.Lock()
	old := d.cfg
	changed := config.Diff(old, next)
	applied, restart := []string{}, []string{}
	reloadable := map[string]bool{}
	for _, p := range config.Reloadable {
		reloadable[p] = true
	}
	for _, p := range changed {
		if reloadable[p] {
			applied = append(applied, p)
		} else {
			restart = append(restart, p)
		}
	}
	cfg := old.WithReloaded(next)
	if d.ro != nil {
		// The slots decide what serves; model.path only seeded them.
		cfg.Model.Path = d.ro.ServingPath()
	}
	d.cfg = cfg
	d.cfgMu.Unlock()
	if d.level != nil {
		d.level.Set(ParseLevel(cfg.Log.Level))
	}
	d.reloadModel(cfg)
	d.model.SetThreshold(cfg.Model.Threshold)
	d.log.Info("configuration reloaded", "applied", applied, "needs_restart", restart)
	d.db.event(context.Background(), "info", "reload", "", fmt.Sprintf("applied %v; needs restart %v", applied, restart))
}

// reloadModel loads the configured bundle again and swaps it in when it is
// a different bundle (another path, or the files at the path changed). A
// bundle that fails verification is rejected with an alert, and the running
// model keeps serving.
func (d *Daemon) reloadModel(cfg config.Config) {
	if d.open == nil {
		return
	}
	if err := d.loadModel(cfg); err != nil {
		d.log.Error("new model rejected; the running model keeps serving", "path", cfg.Model.Path, "err", err,
			"serving", d.model.ModelVersion())
		d.alert(context.Background(), "model_rejected", fmt.Sprintf("%s: %v", cfg.Model.Path, err))
	}
}

// serveModel makes the daemon serve the bundle at path (the rollout's
// promotion or rollback): loaded, then swapped in once the images in
// flight are done with the old one, so no image is lost and a slide in
// progress goes on with the new model.
func (d *Daemon) serveModel(path string) error {
	d.cfgMu.Lock()
	d.cfg.Model.Path = path
	cfg := d.cfg
	d.cfgMu.Unlock()
	if d.open == nil {
		return errors.New("this daemon cannot load models")
	}
	return d.loadModel(cfg)
}

// loadModel loads cfg's model and swaps it in when it is another bundle.
func (d *Daemon) loadModel(cfg config.Config) error {
	next, err := d.open(cfg, d.log)
	if err != nil {
		return err
	}
	if identity(next) == d.model.identity() {
		next.Close()
		return nil
	}
	old := d.model.ModelVersion()
	if err := d.model.swap(next); err != nil {
		d.log.Warn("closing the previous model", "err", err)
	}
	d.metrics.modelInfo.Reset()
	d.metrics.modelInfo.WithLabelValues(next.ModelVersion()).Set(1)
	d.log.Info("model swapped", "from", old, "to", next.ModelVersion(), "path", cfg.Model.Path)
	d.db.event(context.Background(), "info", "model_swapped", "", fmt.Sprintf("%s -> %s (%s)", old, next.ModelVersion(), cfg.Model.Path))
	if d.drift != nil {
		d.drift.modelChanged()
	}
	if d.fb != nil {
		d.fb.modelChanged(next.ModelVersion())
	}
	if d.mq != nil {
		d.mq.publishStatus()
	}
	return nil
}

// ParseLevel is the log level a configuration names (log.level); the
// config's validation has already refused anything else, so an unknown name
// falls back to info.
func ParseLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}
