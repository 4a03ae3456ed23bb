package retune

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/feedback"
	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/store"
	"github.com/scopewatch/scopewatch/tuning"
)

// The worker is the fleet service around Run: it takes retune requests
// from MQTT, keeps them in a queue in SQLite (deduplicated by request id,
// so a redelivered request is one job), runs one job at a time, and
// publishes an accepted bundle as an offer to the request's site. A job
// is a folder under Dir/jobs/{id}: the site's labelled feedback exported
// once (so a resumed job retunes the same snapshot) and Run's output
// folder, which a restarted worker resumes.

// Dataset is where the labelled feedback of a site comes from: the
// collector's dataset (feedback.Collector).
type Dataset interface {
	ExportSite(ctx context.Context, outDir, site string) (int, error)
}

var _ Dataset = (*feedback.Collector)(nil)

// Publisher is the MQTT client the worker publishes events and offers on.
type Publisher interface {
	Publish(topic string, qos byte, retained bool, payload interface{}) mqtt.Token
}

var _ Publisher = mqtt.Client(nil)

// WorkerMetrics receives the worker's counters; NewPromWorkerMetrics adapts
// Prometheus. Implementations must be safe for concurrent use.
type WorkerMetrics interface {
	Request(outcome string) // queued, duplicate, merged, invalid
	Job(state string)       // accepted, refused, failed
	Running(n int)
	OfferPublished(bytes int)
}

type nopWorkerMetrics struct{}

func (nopWorkerMetrics) Request(string)     {}
func (nopWorkerMetrics) Job(string)         {}
func (nopWorkerMetrics) Running(int)        {}
func (nopWorkerMetrics) OfferPublished(int) {}

// WorkerConfig is what a worker needs. DB, Dir, Dataset, Key and
// OpenModel are required.
type WorkerConfig struct {
	// DB holds the worker's tables (worker_jobs, worker_models), opened
	// with WorkerSchema.
	DB      *sql.DB
	Dir     string
	Dataset Dataset
	Topics  mqttconn.Topics
	Key     ed25519.PrivateKey
	// OpenModel opens a bundle folder and its classifier (with the
	// caller's trusted keys and ONNX Runtime).
	OpenModel func(dir string) (*inference.Bundle, *inference.Classifier, error)
	// Models are bundle folders the worker can retune from, besides the
	// bundles it made itself.
	Models  []string
	Nominal []string
	Study   *tuning.Study
	// Recipe and Python are Config's.
	Recipe, Python string
	Snapshot       tuning.SnapshotOptions
	// BaselineSims and BootstrapReps are passed to Run (0: its defaults).
	BaselineSims, BootstrapReps int
	Log                         *slog.Logger
	Now                         func() time.Time
	Metrics                     WorkerMetrics
}

// WorkerSchema is the worker's tables.
var WorkerSchema = store.Schema{Owner: "retune_worker", Migrations: []store.Migration{{SQL: `
CREATE TABLE worker_jobs (
	id         TEXT PRIMARY KEY,   -- the request id
	site       TEXT NOT NULL,
	device     TEXT NOT NULL,
	version    TEXT NOT NULL,      -- the model version the request is about
	request    BLOB NOT NULL,      -- the request as received
	state      TEXT NOT NULL,      -- queued, running, accepted, refused, failed, merged
	detail     TEXT NOT NULL DEFAULT '',
	offered    TEXT NOT NULL DEFAULT '', -- the offered version
	created_ns INTEGER NOT NULL,
	updated_ns INTEGER NOT NULL
);
CREATE INDEX worker_jobs_state ON worker_jobs(state, created_ns);
CREATE TABLE worker_models (
	version TEXT PRIMARY KEY,
	dir     TEXT NOT NULL
);
CREATE TABLE worker_offers (
	site    TEXT PRIMARY KEY,      -- the retained offer of a site
	version TEXT NOT NULL,
	chunks  INTEGER NOT NULL
);`}}}

// Worker runs retune jobs. Handle stores requests; Start runs the job loop
// until Close.
type Worker struct {
	cfg  WorkerConfig
	log  *slog.Logger
	wake chan struct{}

	mu         sync.Mutex
	cancel     context.CancelFunc
	done       chan struct{}
	subscribed atomic.Int64
}

// NewWorker checks cfg and registers cfg.Models.
func NewWorker(ctx context.Context, cfg WorkerConfig) (*Worker, error) {
	if cfg.DB == nil || cfg.Dir == "" || cfg.Dataset == nil || cfg.Key == nil || cfg.OpenModel == nil {
		return nil, errors.New("retune worker: database, folder, dataset, key and model opener are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopWorkerMetrics{}
	}
	w := &Worker{cfg: cfg, log: cfg.Log, wake: make(chan struct{}, 1)}
	for _, dir := range cfg.Models {
		raw, err := os.ReadFile(filepath.Join(dir, inference.ManifestFile))
		if err != nil {
			return nil, fmt.Errorf("retune worker: model %s: %w", dir, err)
		}
		m, err := inference.ParseManifest(raw)
		if err != nil {
			return nil, fmt.Errorf("retune worker: model %s: %w", dir, err)
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, err
		}
		if err := w.registerModel(ctx, m.Version, abs); err != nil {
			return nil, err
		}
	}
	return w, nil
}

func (w *Worker) registerModel(ctx context.Context, version, dir string) error {
	if _, err := w.cfg.DB.ExecContext(ctx, `INSERT INTO worker_models(version, dir) VALUES (?, ?)
		ON CONFLICT(version) DO UPDATE SET dir=excluded.dir`, version, dir); err != nil {
		return fmt.Errorf("retune worker: register model %s: %w", version, err)
	}
	return nil
}

// Handle stores a retune request received on topic. It returns an error
// only when the request could not be stored (the caller leaves it
// unacknowledged for redelivery); a malformed request is logged, counted
// and dropped.
func (w *Worker) Handle(ctx context.Context, topic string, payload []byte) error {
	site, err := w.cfg.Topics.ParseRetuneRequest(topic)
	if err != nil {
		w.log.Warn("retune request on an unexpected topic; dropped", "topic", topic, "err", err)
		w.cfg.Metrics.Request("invalid")
		return nil
	}
	req, err := wire.DecodeRetuneRequest(payload)
	if err == nil && req.Site != site {
		err = fmt.Errorf("site %q in the payload, %q in the topic", req.Site, site)
	}
	if err != nil {
		w.log.Warn("malformed retune request; dropped", "topic", topic, "err", err)
		w.cfg.Metrics.Request("invalid")
		return nil
	}
	now := w.cfg.Now().UnixNano()
	tx, err := w.cfg.DB.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("retune worker: %w", err)
	}
	defer tx.Rollback()
	var exists int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM worker_jobs WHERE id=?`, req.ID).Scan(&exists); err != nil {
		return fmt.Errorf("retune worker: %w", err)
	}
	if exists > 0 {
		w.cfg.Metrics.Request("duplicate")
		return nil
	}
	// One job per site at a time: the devices of a site drift together
	// and share one model, so their requests are one retune.
	var open string
	err = tx.QueryRowContext(ctx, `SELECT id FROM worker_jobs WHERE site=? AND state IN ('queued','running') ORDER BY created_ns LIMIT 1`, site).Scan(&open)
	state, detail := wire.RetuneQueued, ""
	switch {
	case err == nil:
		state, detail = "merged", "job "+open+" for this site is already queued or running"
	case !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("retune worker: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO worker_jobs(id, site, device, version, request, state, detail, created_ns, updated_ns)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, req.ID, site, req.Device, req.ModelVersion, payload, state, detail, now, now); err != nil {
		return fmt.Errorf("retune worker: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("retune worker: %w", err)
	}
	w.log.Info("retune request", "request", req.ID, "site", site, "device", req.Device, "model_version", req.ModelVersion, "state", state)
	w.cfg.Metrics.Request(state)
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return nil
}

// Subscribe registers the request subscription on a connected client
// (through the shared group when group is set). Requests are acknowledged
// after they are stored; the client must be built with AutoAckDisabled.
func (w *Worker) Subscribe(ctx context.Context, client mqtt.Client, group string) error {
	f, err := w.cfg.Topics.RetuneRequestFilter(group)
	if err != nil {
		return err
	}
	tok := client.Subscribe(f, 1, func(_ mqtt.Client, m mqtt.Message) {
		if err := w.Handle(ctx, m.Topic(), m.Payload()); err != nil {
			w.log.Error("could not store a retune request; leaving it unacknowledged for redelivery", "topic", m.Topic(), "err", err)
			return
		}
		m.Ack()
	})
	if err := mqttconn.Wait(tok, 10*time.Second); err != nil {
		return fmt.Errorf("subscribe %s: %v", f, err)
	}
	w.subscribed.Add(1)
	w.log.Info("retune worker subscribed", "filter", f)
	return nil
}

// Subscriptions counts successful Subscribe calls (one per connection):
// readiness for health checks and tests.
func (w *Worker) Subscriptions() int64 { return w.subscribed.Load() }

// Start runs the job loop, publishing on pub, until Close. A job left
// running by a worker that stopped is resumed first.
func (w *Worker) Start(pub Publisher) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done != nil {
		return errors.New("retune worker already started")
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel, w.done = cancel, make(chan struct{})
	go func() {
		defer close(w.done)
		w.loop(ctx, pub)
	}()
	return nil
}

// Close stops the loop: a job in progress is cancelled where it stands
// (its study's journal and the job folder keep it for the next start) and
// Close waits for that, within ctx.
func (w *Worker) Close(ctx context.Context) error {
	w.mu.Lock()
	cancel, done := w.cancel, w.done
	w.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("retune worker: close: %w", ctx.Err())
	}
}

func (w *Worker) loop(ctx context.Context, pub Publisher) {
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		for {
			id, err := w.nextJob(ctx)
			if err != nil || id == "" {
				if err != nil && ctx.Err() == nil {
					w.log.Error("retune worker: next job", "err", err)
				}
				break
			}
			w.cfg.Metrics.Running(1)
			w.runJob(ctx, pub, id)
			w.cfg.Metrics.Running(0)
			if ctx.Err() != nil {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		case <-tick.C:
		}
	}
}

// nextJob is the job to work on: one left running, else the oldest queued.
func (w *Worker) nextJob(ctx context.Context) (string, error) {
	var id string
	err := w.cfg.DB.QueryRowContext(ctx, `SELECT id FROM worker_jobs WHERE state IN ('running','queued')
		ORDER BY state='running' DESC, created_ns, id LIMIT 1`).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return id, err
}

type job struct {
	id, site, device, version string
}

func (w *Worker) setState(ctx context.Context, j job, state, detail, offered string) error {
	_, err := w.cfg.DB.ExecContext(ctx, `UPDATE worker_jobs SET state=?, detail=?, offered=?, updated_ns=? WHERE id=?`,
		state, detail, offered, w.cfg.Now().UnixNano(), j.id)
	if err != nil {
		return fmt.Errorf("retune worker: job %s: %w", j.id, err)
	}
	return nil
}

// event publishes a job's state; events are best effort (the job's row is
// the record), so a failure is logged only.
func (w *Worker) event(pub Publisher, j job, state, detail, version string) {
	topic, err := w.cfg.Topics.RetuneEvent(j.site)
	if err != nil {
		w.log.Error("retune event topic", "site", j.site, "err", err)
		return
	}
	p, err := wire.RetuneEvent{ID: fmt.Sprintf("%s.%s.%d", j.id, state, w.cfg.Now().UnixNano()), Site: j.site, Request: j.id,
		State: state, Detail: truncate(detail, 4000), Version: version, At: w.cfg.Now().UTC()}.Encode()
	if err != nil {
		w.log.Error("retune event", "err", err)
		return
	}
	if err := mqttconn.Wait(pub.Publish(topic, 1, false, p), 10*time.Second); err != nil {
		w.log.Warn("retune event not published", "request", j.id, "state", state, "err", err)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func (w *Worker) runJob(ctx context.Context, pub Publisher, id string) {
	var j job
	if err := w.cfg.DB.QueryRowContext(ctx, `SELECT id, site, device, version FROM worker_jobs WHERE id=?`, id).Scan(&j.id, &j.site, &j.device, &j.version); err != nil {
		w.log.Error("retune worker: load job", "request", id, "err", err)
		return
	}
	log := w.log.With("request", j.id, "site", j.site)
	if err := w.setState(ctx, j, wire.RetuneRunning, "", ""); err != nil {
		log.Error("retune job", "err", err)
		return
	}
	w.event(pub, j, wire.RetuneRunning, "", "")
	log.Info("retune job running", "model_version", j.version)
	dec, err := w.retune(ctx, j, log)
	if ctx.Err() != nil {
		// Stopped, not finished: the job stays running and resumes at the
		// next start.
		log.Info("retune job interrupted; resumes at the next start")
		return
	}
	switch {
	case errors.Is(err, ErrRefused):
		w.finish(ctx, pub, j, wire.RetuneRefused, joinReasons(dec.Reasons), "", log)
	case err != nil:
		w.finish(ctx, pub, j, wire.RetuneFailed, err.Error(), "", log)
	default:
		if err := w.offer(ctx, pub, j, dec); err != nil {
			if ctx.Err() != nil {
				return
			}
			w.finish(ctx, pub, j, wire.RetuneFailed, "offer: "+err.Error(), "", log)
			return
		}
		w.finish(ctx, pub, j, wire.RetuneAccepted, fmt.Sprintf("offered %s to site %s", dec.Version, j.site), dec.Version, log)
	}
}

func (w *Worker) finish(ctx context.Context, pub Publisher, j job, state, detail, version string, log *slog.Logger) {
	if err := w.setState(ctx, j, state, detail, version); err != nil {
		log.Error("retune job", "err", err)
		return
	}
	w.cfg.Metrics.Job(state)
	level := slog.LevelInfo
	if state == wire.RetuneFailed {
		level = slog.LevelError
	}
	log.Log(ctx, level, "retune job finished", "state", state, "detail", detail, "version", version)
	w.event(pub, j, state, detail, version)
}

// retune exports the site's feedback (once per job) and runs or resumes
// the retune; a job whose retune already finished returns its decision.
func (w *Worker) retune(ctx context.Context, j job, log *slog.Logger) (*Decision, error) {
	dir := filepath.Join(w.cfg.Dir, "jobs", j.id)
	out := filepath.Join(dir, "retune")
	if dec, err := LoadDecision(out); err == nil && dec.Accepted {
		// Finished before the worker stopped; what is left is the offer.
		return dec, w.registerModel(ctx, dec.Version, dec.Bundle)
	}
	data := filepath.Join(dir, "feedback")
	if _, err := os.Stat(filepath.Join(data, "labels.csv")); errors.Is(err, os.ErrNotExist) {
		// Exported into a temporary folder and renamed: labels.csv exists
		// only for a complete export, and a resumed job never exports
		// again (new labels since would make it another snapshot).
		tmp := data + ".tmp"
		os.RemoveAll(tmp)
		n, err := w.cfg.Dataset.ExportSite(ctx, tmp, j.site)
		if err != nil {
			return nil, fmt.Errorf("export the feedback of site %s: %w", j.site, err)
		}
		if err := os.Rename(tmp, data); err != nil {
			return nil, fmt.Errorf("retune worker: %w", err)
		}
		log.Info("retune job feedback exported", "samples", n)
	}
	var mdir string
	if err := w.cfg.DB.QueryRowContext(ctx, `SELECT dir FROM worker_models WHERE version=?`, j.version).Scan(&mdir); errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("no bundle of version %s is registered with this worker (start it with --model DIR for that bundle)", j.version)
	} else if err != nil {
		return nil, fmt.Errorf("retune worker: %w", err)
	}
	b, clf, err := w.cfg.OpenModel(mdir)
	if err != nil {
		return nil, fmt.Errorf("incumbent %s: %w", mdir, err)
	}
	defer b.Close()
	defer clf.Close()
	dec, err := Run(ctx, Config{
		Incumbent: b, Scorer: clf, Nominal: w.cfg.Nominal, Feedback: []string{data}, Out: out, Key: w.cfg.Key,
		Ledger: tuning.OpenLedger(filepath.Join(w.cfg.Dir, "sealed-tests.jsonl")), Study: w.cfg.Study, Recipe: w.cfg.Recipe, Python: w.cfg.Python, Snapshot: w.cfg.Snapshot,
		BaselineSims: w.cfg.BaselineSims, BootstrapReps: w.cfg.BootstrapReps, Log: log, Now: w.cfg.Now,
	})
	if err == nil {
		if rerr := w.registerModel(ctx, dec.Version, dec.Bundle); rerr != nil {
			return nil, rerr
		}
	}
	return dec, err
}

// offer publishes the accepted bundle to the job's site: every chunk
// (retained, QoS 1, each acknowledged by the broker) and then the offer,
// so that a device that sees the offer finds all of it. The chunks of the
// site's previous offer are cleared afterwards. Publishing again (a
// resumed job) sends the same bytes.
func (w *Worker) offer(ctx context.Context, pub Publisher, j job, dec *Decision) error {
	b, err := inference.OpenBundle(dec.Bundle, inference.BundleOptions{TrustedKeys: []ed25519.PublicKey{w.cfg.Key.Public().(ed25519.PublicKey)}})
	if err != nil {
		return err
	}
	defer b.Close()
	var archive bytes.Buffer
	if err := inference.PackBundle(b, &archive); err != nil {
		return err
	}
	o := wire.ModelOffer{Site: j.site, Name: b.Manifest.Name, Version: b.Manifest.Version, Incumbent: dec.Incumbent,
		ManifestSHA256: b.ManifestSHA256, Signer: b.Manifest.Signer, Request: j.id, Created: b.Manifest.Created}
	chunks, err := wire.SplitModel(&o, archive.Bytes())
	if err != nil {
		return err
	}
	for i, p := range chunks {
		topic, err := w.cfg.Topics.ModelChunk(j.site, o.Version, i)
		if err != nil {
			return err
		}
		if err := publish(ctx, pub, topic, true, p); err != nil {
			return fmt.Errorf("chunk %d of %d: %w", i, len(chunks), err)
		}
	}
	op, err := o.Encode()
	if err != nil {
		return err
	}
	topic, err := w.cfg.Topics.ModelOffer(j.site)
	if err != nil {
		return err
	}
	var prevVersion string
	var prevChunks int
	if err := w.cfg.DB.QueryRowContext(ctx, `SELECT version, chunks FROM worker_offers WHERE site=?`, j.site).Scan(&prevVersion, &prevChunks); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	if err := publish(ctx, pub, topic, true, op); err != nil {
		return fmt.Errorf("offer: %w", err)
	}
	if _, err := w.cfg.DB.ExecContext(ctx, `INSERT INTO worker_offers(site, version, chunks) VALUES (?, ?, ?)
		ON CONFLICT(site) DO UPDATE SET version=excluded.version, chunks=excluded.chunks`, j.site, o.Version, o.Chunks); err != nil {
		return err
	}
	w.cfg.Metrics.OfferPublished(archive.Len())
	if prevVersion != "" && prevVersion != o.Version {
		// An empty retained message deletes the retained one: the broker
		// stops holding an archive no device should take any more.
		for i := range prevChunks {
			if t, err := w.cfg.Topics.ModelChunk(j.site, prevVersion, i); err == nil {
				if err := publish(ctx, pub, t, true, []byte{}); err != nil {
					w.log.Warn("old offer chunk not cleared", "version", prevVersion, "chunk", i, "err", err)
				}
			}
		}
	}
	return nil
}

// publish sends one message and waits for the broker's acknowledgement,
// retrying while the link is down until ctx ends.
func publish(ctx context.Context, pub Publisher, topic string, retained bool, payload []byte) error {
	for {
		err := mqttconn.Wait(pub.Publish(topic, 1, retained, payload), 30*time.Second)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// LoadDecision reads the decision a retune wrote into out.
func LoadDecision(out string) (*Decision, error) {
	raw, err := os.ReadFile(filepath.Join(out, DecisionFile))
	if err != nil {
		return nil, err
	}
	var d Decision
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(out, DecisionFile), err)
	}
	return &d, nil
}

// JobState is one job as the worker keeps it.
type JobState struct {
	ID, Site, State, Detail, Offered string
}

// Jobs lists the worker's jobs, oldest first.
func (w *Worker) Jobs(ctx context.Context) ([]JobState, error) {
	rows, err := w.cfg.DB.QueryContext(ctx, `SELECT id, site, state, detail, offered FROM worker_jobs ORDER BY created_ns, id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []JobState
	for rows.Next() {
		var j JobState
		if err := rows.Scan(&j.ID, &j.Site, &j.State, &j.Detail, &j.Offered); err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, rows.Err()
}

// Run connects with cfg (AutoAckDisabled and a persistent session are
// forced, so requests published while the worker is away wait for it),
// subscribes on every connection, runs the job loop and returns when ctx
// ends, after the loop has stopped (within closeWait).
func (w *Worker) Run(ctx context.Context, cfg mqttconn.Config, group string, closeWait time.Duration) error {
	cfg.AutoAckDisabled = true
	cfg.CleanSession = false
	client, err := mqttconn.New(cfg, w.log, mqttconn.Hooks{OnConnect: func(cl mqtt.Client) {
		// Subscribing waits for SUBACK, which the network loop delivers:
		// do it off the connect callback.
		go func() {
			if err := w.Subscribe(ctx, cl, group); err != nil && ctx.Err() == nil {
				w.log.Error("retune worker subscribe failed", "err", err)
			}
		}()
	}})
	if err != nil {
		return fmt.Errorf("retune worker: %w", err)
	}
	if err := w.Start(client); err != nil {
		client.Disconnect(250)
		return err
	}
	<-ctx.Done()
	cctx, cancel := context.WithTimeout(context.Background(), closeWait)
	defer cancel()
	err = w.Close(cctx)
	client.Disconnect(500)
	return err
}
