package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // crops arrive as PNG or JPEG
	"image/png"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/feedback"
	"github.com/scopewatch/scopewatch/feedback/selection"
	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
)

// feedbackLink is the device side of feedback in serve: every classified
// crop is offered to the producer (selection, encoding, the shared outbox,
// the sent-samples memory for labels); every window_cells cells a window
// ends, the retuner sees whether the drift monitor was in alarm, and a new
// window starts flagged when the monitor is in warn or alarm. Workers call
// it after an image is stored, outside any transaction (the store allows
// one connection, and the outbox writes through it).
type feedbackLink struct {
	feedbackDeps
	cfg     config.Feedback
	outbox  *feedback.Outbox
	labels  *feedback.Labels
	retuner *feedback.Retuner // nil when retune.enabled is false
	topics  mqttconn.Topics
	sel     *selection.Selector

	mu       sync.Mutex
	prod     *feedback.Producer
	model    string
	window   int64 // current window number, persisted at each boundary
	inWindow int   // cells offered in the current window
}

// thresholded is implemented by analyzers that know their decision
// threshold (for the predicted label and the uncertainty band).
type thresholded interface{ Threshold() float64 }

// feedbackDeps is what the feedback link needs of the daemon, given at
// construction.
type feedbackDeps struct {
	log     *slog.Logger
	config  func() config.Config
	now     func() time.Time
	metrics *serveMetrics
	boot    int64
	// db is the daemon's database, where the labels and the retuner keep
	// their own tables; store holds the link's counters and events.
	db    *sql.DB
	store feedbackStore
	drift driftState
	// model is the serving model's version and decision threshold.
	modelVersion string
	threshold    float64
}

// feedbackStore is the part of the daemon's store the link writes.
type feedbackStore interface {
	meta(ctx context.Context, key string) (string, bool, error)
	setMeta(ctx context.Context, key, value string) error
	event(ctx context.Context, level, kind, slide, detail string) error
}

// driftState is what the link asks of the drift monitor (a nil
// *driftWatch, drift disabled, answers "no drift").
type driftState interface {
	flagged() bool
	alarmed() bool
	evidence() map[string]float64
}

var (
	_ feedbackStore = (*dbStore)(nil)
	_ driftState    = (*driftWatch)(nil)
)

func newFeedbackLink(ctx context.Context, d feedbackDeps, cfg config.Config, outbox *feedback.Outbox) (*feedbackLink, error) {
	fc := cfg.Feedback
	secret, err := deviceSecret(fc.SecretFile)
	if err != nil {
		return nil, err
	}
	labels, err := feedback.NewLabels(ctx, d.db, feedback.LabelsConfig{Now: d.now})
	if err != nil {
		return nil, err
	}
	topics, err := mqttconn.NewTopics(cfg.MQTT.TopicRoot)
	if err != nil {
		return nil, fmt.Errorf("feedback: mqtt.topic_root: %w", err)
	}
	f := &feedbackLink{feedbackDeps: d, cfg: fc, outbox: outbox, labels: labels, model: d.modelVersion, topics: topics}
	if fc.Retune.Enabled {
		topic, err := topics.RetuneRequest(cfg.Site)
		if err != nil {
			return nil, fmt.Errorf("feedback: %w", err)
		}
		f.retuner, err = feedback.NewRetuner(d.db, labels, feedback.RetuneConfig{K: fc.Retune.K, M: fc.Retune.M,
			MinLabelled: fc.Retune.MinLabelled, Cooldown: fc.Retune.Cooldown, Topic: topic, Site: cfg.Site, Device: cfg.Device, Now: d.now})
		if err != nil {
			return nil, err
		}
	}
	if v, ok, err := d.store.meta(ctx, "feedback_window"); err != nil {
		return nil, err
	} else if ok {
		f.window, _ = strconv.ParseInt(v, 10, 64)
	}
	thr := 0.5
	if d.threshold > 0 {
		thr = d.threshold
	}
	sel := selection.New(selection.Config{Threshold: thr, Band: fc.Band, DriftRate: fc.DriftRate, RandomRate: fc.RandomRate,
		MaxPerWindow: fc.MaxPerWindow, DailyBytes: fc.DailyBytes, Seed: uint64(d.boot), Now: d.now})
	// The day's byte budget survives restarts.
	if v, ok, err := d.store.meta(ctx, "feedback_day_bytes"); err != nil {
		return nil, err
	} else if ok {
		if day, n, found := strings.Cut(v, " "); found {
			if b, err := strconv.ParseInt(n, 10, 64); err == nil {
				sel.RestoreDayUsage(day, b)
			}
		}
	}
	f.sel = sel
	f.prod, err = feedback.NewProducer(feedback.ProducerConfig{Site: cfg.Site, Device: cfg.Device, Topics: topics, DeviceSecret: secret,
		ModelVersion: f.model, Threshold: thr, Now: d.now}, sel, outbox, labels)
	if err != nil {
		return nil, err
	}
	f.prod.StartWindow(d.drift.flagged())
	return f, nil
}

// deviceSecret reads the slide-hash key, creating it on first use.
func deviceSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if len(b) < 16 {
			return nil, fmt.Errorf("feedback.secret_file %s: %d bytes, want at least 16 (delete it to make a new one)", path, len(b))
		}
		return b, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("feedback.secret_file: %w", err)
	}
	b = make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("feedback secret: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("feedback.secret_file: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, fmt.Errorf("feedback.secret_file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("feedback.secret_file: %w", err)
	}
	return b, nil
}

// offer feeds one stored image's cells: a crop is offered with its bytes
// (cleaned only if selected); the cells of a field only advance the window
// (cropping fields for feedback is not done here).
func (f *feedbackLink) offer(ctx context.Context, slide string, data []byte, an analysis) {
	var crop []byte
	if an.Kind == "crop" {
		crop = data
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range an.Cells {
		if f.inWindow >= f.cfg.WindowCells {
			f.endWindow(ctx)
		}
		f.inWindow++
		if crop == nil {
			continue
		}
		_, sent, err := f.prod.Offer(ctx, f.window, feedback.Cell{SlideID: slide, Crop: crop, P: c.P, Clean: cleanCrop})
		switch {
		case errors.Is(err, errNotCellCrop):
			f.log.Debug("crop not offered as feedback", "slide", slide, "err", err)
			f.metrics.errors.WithLabelValues("feedback_crop").Inc()
		case err != nil:
			f.log.Warn("offering feedback failed", "slide", slide, "err", err)
			f.metrics.errors.WithLabelValues("feedback").Inc()
		case sent:
			f.metrics.feedbackSamples.Inc()
			day, n := f.sel.DayUsage()
			if err := f.store.setMeta(ctx, "feedback_day_bytes", day+" "+strconv.FormatInt(n, 10)); err != nil {
				f.log.Warn("saving the feedback byte budget failed", "err", err)
			}
		}
	}
}

// endWindow closes the current window (retune rule, agreement gauges) and
// starts the next. Called with mu held.
func (f *feedbackLink) endWindow(ctx context.Context) {
	alarm := f.drift.alarmed()
	if f.retuner != nil {
		evidence := f.drift.evidence()
		rec, err := f.retuner.Window(ctx, alarm, f.model, "drift alarm persisted", evidence)
		if err != nil {
			f.log.Warn("retune rule failed", "err", err)
		} else if rec != nil {
			if err := f.outbox.EnqueueBatch(ctx, *rec); err != nil {
				f.log.Error("queueing the retune request failed", "err", err)
			} else {
				f.metrics.retuneRequests.Inc()
				f.log.Warn("retune requested", "id", rec.ID, "model", f.model)
				f.store.event(ctx, "warn", "retune_request", "", fmt.Sprintf("%s for model %s", rec.ID, f.model))
			}
		}
	}
	if a, err := f.labels.AgreementSince(ctx, 0); err == nil {
		f.metrics.feedbackLabelled.Set(float64(a.Labelled))
		f.metrics.feedbackAgreement.Set(a.Accuracy())
	}
	f.window++
	f.inWindow = 0
	if err := f.store.setMeta(ctx, "feedback_window", strconv.FormatInt(f.window, 10)); err != nil {
		f.log.Warn("saving the feedback window failed", "err", err)
	}
	f.prod.StartWindow(f.drift.flagged())
	f.metrics.feedbackWindows.Inc()
}

// maxCropPixels bounds what is re-encoded as a feedback crop (a crop of
// one red cell is about 150x150).
const maxCropPixels = 512 * 512

// errNotCellCrop marks a selected crop that cannot be sent as feedback.
var errNotCellCrop = errors.New("not a cell crop")

// cleanCrop re-encodes a crop as PNG: only pixels leave the device, never
// the file's metadata (PNG text chunks, EXIF, comments), which microscope
// software may fill with patient or operator details.
func cleanCrop(data []byte) ([]byte, error) {
	cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNotCellCrop, err)
	}
	if cfg.Width*cfg.Height > maxCropPixels {
		return nil, fmt.Errorf("%w: %dx%d is larger than a cell crop", errNotCellCrop, cfg.Width, cfg.Height)
	}
	img, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNotCellCrop, err)
	}
	var buf bytes.Buffer
	if err := (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("%w: %w", errNotCellCrop, err)
	}
	return buf.Bytes(), nil
}

// modelChanged stamps samples with the new model's version.
func (f *feedbackLink) modelChanged(version string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.model = version
	f.prod.SetModelVersion(version)
}

// subscribe takes labels from this device's label topic; called on every
// (re)connect.
func (f *feedbackLink) subscribe(ctx context.Context, c mqtt.Client) {
	cfg := f.config()
	topic, err := f.topics.Device(cfg.Site, cfg.Device, mqttconn.KindLabel)
	if err == nil {
		err = f.labels.Subscribe(ctx, c, topic, f.log, func(reason string) {
			f.metrics.labelsRejected.WithLabelValues(reason).Inc()
		})
	}
	if err != nil {
		f.log.Warn("label subscription failed; retried on the next connect", "err", err)
	}
}
