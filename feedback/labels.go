package feedback

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/store"
)

// ErrUnknownID is returned for a label whose feedback id the receiver never
// sent (Labels) or received (Collector).
var ErrUnknownID = errors.New("unknown feedback id")

// Labels is the device side of labelling: it remembers which samples were
// sent (with the model's prediction and the drift window), accepts
// operator labels for them from the label topic or the command line, and
// reports how often people agree with the model, which is a real accuracy
// once labels flow (on a selection that over-represents hard cells: use
// the wire.ReasonRandom slice for an unbiased figure).
type Labels struct {
	db         *sql.DB
	now        func() time.Time
	maxSamples int
}

// LabelsConfig configures Labels. MaxSent bounds feedback_sent (default
// 200,000 rows; the oldest rows and their labels go first).
type LabelsConfig struct {
	MaxSent int
	Now     func() time.Time
}

// NewLabels applies Schema to db.
func NewLabels(ctx context.Context, db *sql.DB, cfg LabelsConfig) (*Labels, error) {
	if err := store.Migrate(ctx, db, Schema()); err != nil {
		return nil, fmt.Errorf("open labels: %w", err)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxSent <= 0 {
		cfg.MaxSent = 200_000
	}
	return &Labels{db: db, now: cfg.Now, maxSamples: cfg.MaxSent}, nil
}

// Sent records that sample s (of drift window `window`) was queued for
// sending. Idempotent by id.
func (l *Labels) Sent(ctx context.Context, s wire.Sample, window int64) error {
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("record sent sample: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO feedback_sent(id, window, p_parasitized, label_predicted, model_version, reason, time_ns)
		VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO NOTHING`, s.ID, window, s.PParasitized, s.LabelPredicted, s.ModelVersion, s.Reason, s.Time.UnixNano()); err != nil {
		return fmt.Errorf("record sent sample: %w", err)
	}
	// Retention: keep the newest MaxSent rows.
	if _, err := tx.ExecContext(ctx, `DELETE FROM feedback_sent WHERE id IN (
		SELECT id FROM feedback_sent ORDER BY time_ns DESC LIMIT -1 OFFSET ?)`, l.maxSamples); err != nil {
		return fmt.Errorf("record sent sample: retention: %w", err)
	}
	return tx.Commit()
}

// Handle stores a label message from the label topic. Malformed labels
// return the decoder's error; a label for an id this device never sent
// returns ErrUnknownID. A later label replaces an earlier one.
func (l *Labels) Handle(ctx context.Context, payload []byte) error {
	lb, err := wire.DecodeLabel(payload)
	if err != nil {
		return err
	}
	return l.Put(ctx, lb)
}

// Put stores a validated label.
func (l *Labels) Put(ctx context.Context, lb wire.Label) error {
	if err := lb.Validate(); err != nil {
		return err
	}
	res, err := l.db.ExecContext(ctx, `INSERT INTO feedback_labels(feedback_id, label, who, time_ns)
		SELECT id, ?, ?, ? FROM feedback_sent WHERE id = ?
		ON CONFLICT(feedback_id) DO UPDATE SET label=excluded.label, who=excluded.who, time_ns=excluded.time_ns
		WHERE excluded.time_ns > feedback_labels.time_ns`, lb.Label, lb.Who, lb.Time.UnixNano(), lb.FeedbackID)
	if err != nil {
		return fmt.Errorf("store label: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		var exists int
		l.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM feedback_sent WHERE id=?`, lb.FeedbackID).Scan(&exists)
		if exists == 0 {
			return fmt.Errorf("%w: %s", ErrUnknownID, lb.FeedbackID)
		}
	}
	return nil
}

// Agreement summarises labels against predictions.
type Agreement struct {
	Labelled, Agree int
	// Random counts only the wire.ReasonRandom slice: the unbiased estimate.
	RandomLabelled, RandomAgree int
}

// Accuracy is Agree/Labelled (NaN without labels).
func (a Agreement) Accuracy() float64 {
	if a.Labelled == 0 {
		return math.NaN()
	}
	return float64(a.Agree) / float64(a.Labelled)
}

// AgreementSince sums agreement over windows >= fromWindow.
func (l *Labels) AgreementSince(ctx context.Context, fromWindow int64) (Agreement, error) {
	var a Agreement
	err := l.db.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(l.label = s.label_predicted),0),
		COALESCE(SUM(s.reason = 'random'),0), COALESCE(SUM(s.reason = 'random' AND l.label = s.label_predicted),0)
		FROM feedback_labels l JOIN feedback_sent s ON s.id = l.feedback_id WHERE s.window >= ?`, fromWindow).
		Scan(&a.Labelled, &a.Agree, &a.RandomLabelled, &a.RandomAgree)
	if err != nil {
		return a, fmt.Errorf("label agreement: %w", err)
	}
	return a, nil
}

// LabelledIDs lists up to limit labelled feedback ids, newest first.
func (l *Labels) LabelledIDs(ctx context.Context, limit int) ([]string, error) {
	rows, err := l.db.QueryContext(ctx, `SELECT l.feedback_id FROM feedback_labels l JOIN feedback_sent s ON s.id = l.feedback_id
		ORDER BY s.time_ns DESC LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("labelled ids: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// RetuneConfig says when to ask for retuning: when at least K of the last
// M windows alarmed and at least MinLabelled labelled samples exist, at
// most once per Cooldown (remembered across restarts).
type RetuneConfig struct {
	K, M         int           // default 3 of 5
	MinLabelled  int           // default 200
	Cooldown     time.Duration // default 24 h
	Topic        string        // scopewatch/v1/{site}/retune/request
	Site, Device string
	Now          func() time.Time
}

// Retuner tracks alarms per window and produces retune requests.
type Retuner struct {
	cfg    RetuneConfig
	db     *sql.DB
	labels *Labels
	recent []bool
}

// NewRetuner checks cfg; labels supplies the labelled feedback.
func NewRetuner(db *sql.DB, labels *Labels, cfg RetuneConfig) (*Retuner, error) {
	if cfg.K <= 0 {
		cfg.K = 3
	}
	if cfg.M < cfg.K {
		cfg.M = max(5, cfg.K)
	}
	if cfg.MinLabelled <= 0 {
		cfg.MinLabelled = 200
	}
	if cfg.Cooldown <= 0 {
		cfg.Cooldown = 24 * time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Topic == "" {
		return nil, errors.New("retune: topic is empty")
	}
	return &Retuner{cfg: cfg, db: db, labels: labels}, nil
}

// Window records one finished drift window. When the rule fires it returns
// the request as an outbox record (priority of an alert), which the caller
// enqueues; the cooldown starts when the record is returned.
func (r *Retuner) Window(ctx context.Context, alarm bool, modelVersion, reason string, evidence map[string]float64) (*Record, error) {
	r.recent = append(r.recent, alarm)
	if len(r.recent) > r.cfg.M {
		r.recent = r.recent[len(r.recent)-r.cfg.M:]
	}
	alarms := 0
	for _, a := range r.recent {
		if a {
			alarms++
		}
	}
	if alarms < r.cfg.K {
		return nil, nil
	}
	now := r.cfg.Now()
	var last int64
	if err := r.db.QueryRowContext(ctx, `SELECT COALESCE((SELECT value FROM feedback_meta WHERE key='retune_last_ns'), 0)`).Scan(&last); err != nil {
		return nil, fmt.Errorf("retune: %w", err)
	}
	if last != 0 && now.Sub(time.Unix(0, last)) < r.cfg.Cooldown {
		return nil, nil
	}
	ids, err := r.labels.LabelledIDs(ctx, 10_000)
	if err != nil {
		return nil, err
	}
	if len(ids) < r.cfg.MinLabelled {
		return nil, nil
	}
	req := wire.RetuneRequest{Schema: wire.RetuneSchema, ID: fmt.Sprintf("retune-%s-%d", r.cfg.Device, now.UnixNano()), Site: r.cfg.Site,
		Device: r.cfg.Device, ModelVersion: modelVersion, Reason: reason, Evidence: evidence, FeedbackIDs: ids, Time: now.UTC()}
	payload, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("retune: %w", err)
	}
	for len(payload) > wire.MaxPayload && len(req.FeedbackIDs) > 1 {
		req.FeedbackIDs = req.FeedbackIDs[:len(req.FeedbackIDs)/2]
		payload, _ = json.Marshal(req)
	}
	if _, err := r.db.ExecContext(ctx, `INSERT INTO feedback_meta(key, value) VALUES ('retune_last_ns', ?)
		ON CONFLICT(key) DO UPDATE SET value=excluded.value`, now.UnixNano()); err != nil {
		return nil, fmt.Errorf("retune: %w", err)
	}
	return &Record{ID: req.ID, Kind: KindAlert, Topic: r.cfg.Topic, Payload: payload, QoS: 1}, nil
}

// Subscribe subscribes client to this device's label topic (see
// mqttconn.Topics.Device with KindLabel) and stores incoming labels. Call
// it from the OnConnect hook. Rejected labels are logged and passed to
// onReject (may be nil) with their reason (see RejectReason); with
// mqttconn's AutoAckDisabled the message is acknowledged only once stored
// or rejected, otherwise paho acknowledges after the handler returns.
func (l *Labels) Subscribe(ctx context.Context, client mqtt.Client, topic string, log *slog.Logger, onReject func(reason string)) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tok := client.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		err := l.Handle(ctx, m.Payload())
		if r := RejectReason(err); r != "" {
			log.Warn("rejected label", "topic", m.Topic(), "reason", r, "err", err)
			if onReject != nil {
				onReject(r)
			}
		} else if err != nil {
			log.Error("could not store label; leaving it for redelivery", "err", err)
			return
		}
		m.Ack()
	})
	if err := mqttconn.Wait(tok, 10*time.Second); err != nil {
		return fmt.Errorf("subscribe %s: %v", topic, err)
	}
	return nil
}
