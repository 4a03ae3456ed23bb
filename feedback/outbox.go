package feedback

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/store"
)

// Kind classifies an outbox record; it fixes the record's priority.
type Kind string

// Record kinds, in the order the sender serves them; each is named after
// the topic leaf it is published on.
const (
	KindStatus   = Kind(mqttconn.KindStatus)
	KindAlert    = Kind(mqttconn.KindAlert)
	KindResult   = Kind(mqttconn.KindResult)
	KindFeedback = Kind(mqttconn.KindFeedback)
)

// Priority orders the sender's work: lower goes first. Status is tiny and
// latest-value-only, alerts matter most to operators, results are the
// product, feedback is best-effort and the only kind ever dropped.
func (k Kind) Priority() int {
	switch k {
	case KindStatus:
		return 0
	case KindAlert:
		return 1
	case KindResult:
		return 2
	case KindFeedback:
		return 3
	}
	return -1
}

// Sentinel errors of the outbox.
var (
	ErrInvalidRecord = errors.New("invalid outbox record")
	ErrTooLarge      = errors.New("payload larger than 128 KiB")
	// ErrDropped is returned for a feedback record refused because the
	// outbox is full of records that may not be dropped.
	ErrDropped = errors.New("outbox full: feedback record dropped")
	ErrClosed  = errors.New("outbox closed")
	// ErrDiskFull means SQLite could not grow the database (disk or
	// max_page_count reached): nothing was stored; alert and retry later.
	ErrDiskFull = errors.New("outbox database full")
)

// Record is one outbound MQTT message.
type Record struct {
	// ID is stable across retries and restarts; enqueueing an ID that is
	// already pending is a no-op, and receivers deduplicate by it.
	ID      string
	Kind    Kind
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
	// Group ties records that must be dropped together (a sample and its
	// chunks); empty means the record is its own group.
	Group string
}

// Publisher is the part of a paho client the sender uses; mqtt.Client
// satisfies it.
type Publisher interface {
	Publish(topic string, qos byte, retained bool, payload interface{}) mqtt.Token
	IsConnectionOpen() bool
}

var _ Publisher = mqtt.Client(nil)

// OutboxMetrics receives the outbox's counters. Implementations must be
// cheap and safe for concurrent use. NewPromMetrics adapts Prometheus.
type OutboxMetrics interface {
	Enqueued(kind Kind, bytes int)
	Sent(kind Kind, bytes int)
	Dropped(kind Kind, records int)
	PublishFailed(kind Kind)
	Depth(records int, bytes int64)
}

type nopMetrics struct{}

func (nopMetrics) Enqueued(Kind, int)    {}
func (nopMetrics) Sent(Kind, int)        {}
func (nopMetrics) Dropped(Kind, int)     {}
func (nopMetrics) PublishFailed(Kind)    {}
func (nopMetrics) Depth(int, int64)      {}
func (o *Outbox) metrics() OutboxMetrics { return o.cfg.Metrics }

// OutboxConfig tunes an Outbox. Zero values take the defaults noted.
type OutboxConfig struct {
	// MaxRecords and MaxBytes (payload bytes) bound the outbox; defaults
	// 100,000 records and 256 MiB. When a new record would exceed them the
	// oldest feedback groups are dropped; results, alerts and status are
	// never dropped (they may push the outbox past its bound, which is
	// logged; the database's own disk cap is the last line).
	MaxRecords int
	MaxBytes   int64
	// BytesPerSecond limits publishing (0: unlimited), with bursts up to
	// max(BurstBytes, wire.MaxPayload).
	BytesPerSecond int
	BurstBytes     int
	// Window is how many publishes may await PUBACK at once; default 64.
	Window int
	// AckTimeout bounds the wait for one PUBACK; default 10 s.
	AckTimeout time.Duration
	// RetryMin/RetryMax bound the per-record backoff after a publish the
	// broker failed while the connection stayed up; defaults 1 s and 60 s.
	RetryMin, RetryMax time.Duration
	// AlertTopic, when set, receives an alert record when feedback is
	// dropped, at most once per DropAlertInterval (default 1 h).
	AlertTopic        string
	Site, Device      string
	DropAlertInterval time.Duration
	// Now is the clock; default time.Now.
	Now     func() time.Time
	Log     *slog.Logger
	Metrics OutboxMetrics
}

func (c *OutboxConfig) defaults() {
	if c.MaxRecords <= 0 {
		c.MaxRecords = 100_000
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = 256 << 20
	}
	if c.Window <= 0 {
		c.Window = 64
	}
	if c.AckTimeout <= 0 {
		c.AckTimeout = 10 * time.Second
	}
	if c.RetryMin <= 0 {
		c.RetryMin = time.Second
	}
	if c.RetryMax < c.RetryMin {
		c.RetryMax = max(60*time.Second, c.RetryMin)
	}
	if c.DropAlertInterval <= 0 {
		c.DropAlertInterval = time.Hour
	}
	if c.BurstBytes < wire.MaxPayload {
		c.BurstBytes = wire.MaxPayload
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = nopMetrics{}
	}
}

// Schema is the device-side schema of this package; pass it to store.Open
// (NewOutbox also applies it).
func Schema() store.Schema {
	return store.Schema{Owner: "feedback", Migrations: []store.Migration{
		{SQL: `
CREATE TABLE feedback_outbox (
	seq        INTEGER PRIMARY KEY AUTOINCREMENT,
	id         TEXT NOT NULL UNIQUE,
	grp        TEXT NOT NULL,
	kind       TEXT NOT NULL,
	priority   INTEGER NOT NULL,
	topic      TEXT NOT NULL,
	payload    BLOB NOT NULL,
	qos        INTEGER NOT NULL,
	retain     INTEGER NOT NULL,
	size       INTEGER NOT NULL,
	created_ns INTEGER NOT NULL,
	attempts   INTEGER NOT NULL DEFAULT 0,
	next_ns    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX feedback_outbox_order ON feedback_outbox(priority, seq);
CREATE INDEX feedback_outbox_grp ON feedback_outbox(grp);
CREATE TABLE feedback_meta (
	key   TEXT PRIMARY KEY,
	value INTEGER NOT NULL
);`},
		{SQL: `
CREATE TABLE feedback_sent (
	id              TEXT PRIMARY KEY,
	window          INTEGER NOT NULL,
	p_parasitized   REAL NOT NULL,
	label_predicted TEXT NOT NULL,
	model_version   TEXT NOT NULL,
	reason          TEXT NOT NULL,
	time_ns         INTEGER NOT NULL
);
CREATE INDEX feedback_sent_window ON feedback_sent(window);
CREATE INDEX feedback_sent_time ON feedback_sent(time_ns);
CREATE TABLE feedback_labels (
	feedback_id TEXT PRIMARY KEY REFERENCES feedback_sent(id) ON DELETE CASCADE,
	label       TEXT NOT NULL,
	who         TEXT NOT NULL,
	time_ns     INTEGER NOT NULL
);`},
	}}
}

// Outbox is the durable store-and-forward queue of outbound MQTT records.
// Enqueue may be called from any goroutine; one sender (Start) publishes.
type Outbox struct {
	db  *sql.DB
	cfg OutboxConfig

	mu      sync.Mutex
	records int
	bytes   int64
	dropped int64
	closed  bool

	wake   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// NewOutbox applies Schema to db (a writer from store.Open) and loads the
// outbox's depth.
func NewOutbox(ctx context.Context, db *sql.DB, cfg OutboxConfig) (*Outbox, error) {
	cfg.defaults()
	if cfg.AlertTopic != "" {
		if err := mqttconn.ValidateTopic(cfg.AlertTopic); err != nil {
			return nil, fmt.Errorf("open outbox: alert topic: %w", err)
		}
	}
	if err := store.Migrate(ctx, db, Schema()); err != nil {
		return nil, fmt.Errorf("open outbox: %w", err)
	}
	o := &Outbox{db: db, cfg: cfg, wake: make(chan struct{}, 1)}
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(size),0) FROM feedback_outbox`).Scan(&o.records, &o.bytes); err != nil {
		return nil, fmt.Errorf("open outbox: depth: %w", err)
	}
	if err := db.QueryRowContext(ctx, `SELECT COALESCE((SELECT value FROM feedback_meta WHERE key='dropped_total'),0)`).Scan(&o.dropped); err != nil {
		return nil, fmt.Errorf("open outbox: drop count: %w", err)
	}
	cfg.Metrics.Depth(o.records, o.bytes)
	return o, nil
}

func validate(r *Record) error {
	if r.ID == "" || len(r.ID) > 200 {
		return fmt.Errorf("%w: id must be 1-200 bytes, got %d", ErrInvalidRecord, len(r.ID))
	}
	if r.Kind.Priority() < 0 {
		return fmt.Errorf("%w: record %s: kind %q is not status, alert, result or feedback", ErrInvalidRecord, r.ID, r.Kind)
	}
	if err := mqttconn.ValidateTopic(r.Topic); err != nil {
		return fmt.Errorf("%w: record %s: %v", ErrInvalidRecord, r.ID, err)
	}
	if r.QoS > 2 {
		return fmt.Errorf("%w: record %s: qos %d not in 0..2", ErrInvalidRecord, r.ID, r.QoS)
	}
	if len(r.Payload) > wire.MaxPayload {
		return fmt.Errorf("record %s: %d bytes: %w", r.ID, len(r.Payload), ErrTooLarge)
	}
	if r.Group == "" {
		r.Group = r.ID
	}
	return nil
}

// Enqueue stores one record durably: when it returns nil the record is
// committed with synchronous=FULL and will be published even if the process
// dies right after.
func (o *Outbox) Enqueue(ctx context.Context, r Record) error {
	return o.EnqueueBatch(ctx, r)
}

// EnqueueBatch stores several records in one transaction (one fsync): all
// or none. Records whose ID is already pending are skipped. A feedback
// record that cannot fit, even after dropping older feedback, is dropped
// and counted, and the batch still commits with ErrDropped returned.
func (o *Outbox) EnqueueBatch(ctx context.Context, recs ...Record) error {
	return wrapFull(o.enqueue(ctx, recs))
}

// wrapFull marks SQLite's "database or disk is full" as ErrDiskFull.
func wrapFull(err error) error {
	if store.IsFull(err) {
		return fmt.Errorf("%w: %v", ErrDiskFull, err)
	}
	return err
}

func (o *Outbox) enqueue(ctx context.Context, recs []Record) error {
	for i := range recs {
		if err := validate(&recs[i]); err != nil {
			return err
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return ErrClosed
	}
	tx, err := o.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	defer tx.Rollback()
	now := o.cfg.Now().UnixNano()
	records, bytes := o.records, o.bytes
	var added []Record
	var dropErr error
	droppedNow := 0
	for _, r := range recs {
		size := int64(len(r.Payload))
		over := records+1 > o.cfg.MaxRecords || bytes+size > o.cfg.MaxBytes
		if over {
			var dup int
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM feedback_outbox WHERE id=?`, r.ID).Scan(&dup); err != nil {
				return fmt.Errorf("enqueue %s: %w", r.ID, err)
			}
			if dup > 0 {
				continue
			}
			nr, nb, err := o.evict(ctx, tx, records+1-o.cfg.MaxRecords, bytes+size-o.cfg.MaxBytes)
			if err != nil {
				return err
			}
			records -= nr
			bytes -= nb
			droppedNow += nr
		}
		if records+1 > o.cfg.MaxRecords || bytes+size > o.cfg.MaxBytes {
			if r.Kind == KindFeedback {
				droppedNow++
				dropErr = ErrDropped
				o.metrics().Dropped(KindFeedback, 1)
				continue
			}
			o.cfg.Log.Warn("outbox over its bound: keeping a record that may not be dropped", "kind", r.Kind, "id", r.ID, "records", records+1, "bytes", bytes+size)
		}
		nr, nb, ok, err := insertOne(ctx, tx, r, now)
		if err != nil {
			return err
		}
		records += nr
		bytes += nb
		if ok {
			added = append(added, r)
		}
	}
	if droppedNow > 0 {
		nr, nb, extra, err := o.recordDrops(ctx, tx, droppedNow, now, records, bytes)
		if err != nil {
			return err
		}
		records += nr
		bytes += nb
		droppedNow += extra
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("enqueue: commit: %w", err)
	}
	o.records, o.bytes = records, bytes
	o.dropped += int64(droppedNow)
	for _, r := range added {
		o.metrics().Enqueued(r.Kind, len(r.Payload))
	}
	o.metrics().Depth(records, bytes)
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return dropErr
}

// ErrDroppable is returned by EnqueueTx for a feedback record: feedback may
// be dropped to keep the outbox within its bounds, which only EnqueueBatch
// decides.
var ErrDroppable = errors.New("feedback records go through EnqueueBatch")

// EnqueueTx records results, alerts and status in the caller's transaction
// tx (on the outbox's database), so that a record and the change it reports
// commit together: one write transaction, no second table and no relay.
// After tx commits, the caller must call committed, which updates the
// outbox's depth and wakes the sender; after a rollback it must not. These
// kinds are never dropped, so the bounds are not enforced here (going over
// them is logged); a feedback record is ErrDroppable.
func (o *Outbox) EnqueueTx(ctx context.Context, tx *sql.Tx, recs ...Record) (committed func(), err error) {
	for i := range recs {
		if err := validate(&recs[i]); err != nil {
			return nil, err
		}
		if recs[i].Kind == KindFeedback {
			return nil, fmt.Errorf("record %s: %w", recs[i].ID, ErrDroppable)
		}
	}
	o.mu.Lock()
	closed := o.closed
	o.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	nr, nb, added, err := insertTx(ctx, tx, o.cfg.Now(), recs)
	if err != nil {
		return nil, wrapFull(err)
	}
	return func() {
		o.mu.Lock()
		o.records += nr
		o.bytes += nb
		records, bytes := o.records, o.bytes
		o.mu.Unlock()
		if records > o.cfg.MaxRecords || bytes > o.cfg.MaxBytes {
			o.cfg.Log.Warn("outbox over its bound: keeping records that may not be dropped", "records", records, "bytes", bytes)
		}
		for _, r := range added {
			o.metrics().Enqueued(r.Kind, len(r.Payload))
		}
		o.metrics().Depth(records, bytes)
		select {
		case o.wake <- struct{}{}:
		default:
		}
	}, nil
}

// InsertTx writes records into the outbox table in tx without an Outbox:
// for a schema migration that hands over another table's unsent messages.
// The next NewOutbox counts them.
func InsertTx(ctx context.Context, tx *sql.Tx, now time.Time, recs ...Record) error {
	for i := range recs {
		if err := validate(&recs[i]); err != nil {
			return err
		}
	}
	_, _, _, err := insertTx(ctx, tx, now, recs)
	return err
}

// insertTx inserts records and returns how the outbox's depth changed and
// what was new.
func insertTx(ctx context.Context, tx *sql.Tx, now time.Time, recs []Record) (int, int64, []Record, error) {
	var records int
	var bytes int64
	var added []Record
	for _, r := range recs {
		nr, nb, ok, err := insertOne(ctx, tx, r, now.UnixNano())
		if err != nil {
			return 0, 0, nil, err
		}
		records += nr
		bytes += nb
		if ok {
			added = append(added, r)
		}
	}
	return records, bytes, added, nil
}

// insertOne inserts one validated record unless its id is pending, and
// returns how the outbox's depth changed and whether it was new. Status is
// retained and latest-value-only: a newer one supersedes what is pending on
// the same topic.
func insertOne(ctx context.Context, tx *sql.Tx, r Record, nowNS int64) (int, int64, bool, error) {
	var records int
	var bytes int64
	if r.Kind == KindStatus {
		nr, nb, err := deleteWhere(ctx, tx, `kind='status' AND topic=?`, r.Topic)
		if err != nil {
			return 0, 0, false, err
		}
		records -= nr
		bytes -= nb
	}
	size := int64(len(r.Payload))
	res, err := tx.ExecContext(ctx, `INSERT INTO feedback_outbox(id, grp, kind, priority, topic, payload, qos, retain, size, created_ns)
		VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO NOTHING`,
		r.ID, r.Group, string(r.Kind), r.Kind.Priority(), r.Topic, r.Payload, r.QoS, r.Retain, size, nowNS)
	if err != nil {
		return 0, 0, false, fmt.Errorf("enqueue %s: %w", r.ID, err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return records, bytes, false, nil
	}
	return records + 1, bytes + size, true, nil
}

// evict drops the oldest feedback groups until at least needRecords
// records and needBytes bytes are freed or no feedback is left.
func (o *Outbox) evict(ctx context.Context, tx *sql.Tx, needRecords int, needBytes int64) (int, int64, error) {
	var freedR int
	var freedB int64
	for freedR < needRecords || freedB < needBytes {
		var grp string
		err := tx.QueryRowContext(ctx, `SELECT grp FROM feedback_outbox WHERE priority=? ORDER BY seq LIMIT 1`, KindFeedback.Priority()).Scan(&grp)
		if errors.Is(err, sql.ErrNoRows) {
			break
		}
		if err != nil {
			return 0, 0, fmt.Errorf("enqueue: evict: %w", err)
		}
		nr, nb, err := deleteWhere(ctx, tx, `grp=?`, grp)
		if err != nil {
			return 0, 0, err
		}
		freedR += nr
		freedB += nb
		o.metrics().Dropped(KindFeedback, nr)
	}
	return freedR, freedB, nil
}

func deleteWhere(ctx context.Context, tx *sql.Tx, where string, args ...any) (int, int64, error) {
	var n int
	var b int64
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(size),0) FROM feedback_outbox WHERE `+where, args...).Scan(&n, &b); err != nil {
		return 0, 0, fmt.Errorf("outbox delete: %w", err)
	}
	if n == 0 {
		return 0, 0, nil
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM feedback_outbox WHERE `+where, args...); err != nil {
		return 0, 0, fmt.Errorf("outbox delete: %w", err)
	}
	return n, b, nil
}

// dropAlert is the alert payload reporting dropped feedback.
func (o *Outbox) dropAlert(id string, dropped, total, now int64) []byte {
	b, err := json.Marshal(wire.Alert{Schema: wire.AlertSchema, ID: id, Site: o.cfg.Site, Device: o.cfg.Device,
		Kind: "outbox_feedback_dropped", Severity: wire.SeverityWarn,
		Detail:  fmt.Sprintf("outbox full: %d feedback records dropped (%d in all)", dropped, total),
		Dropped: dropped, DroppedTotal: total, At: time.Unix(0, now).UTC()})
	if err != nil { // strings, integers and a time: cannot fail
		o.cfg.Log.Error("encoding the drop alert failed", "err", err)
	}
	return b
}

// recordDrops counts drops and, at most once per DropAlertInterval, adds
// an alert record (dropping more feedback if the alert itself would not
// fit). It returns the records and bytes it changed the outbox by and the
// extra drops it made.
func (o *Outbox) recordDrops(ctx context.Context, tx *sql.Tx, n int, now int64, records int, bytes int64) (int, int64, int, error) {
	o.cfg.Log.Warn("outbox full: dropped oldest feedback", "records", n, "bound_records", o.cfg.MaxRecords, "bound_bytes", o.cfg.MaxBytes)
	var last, unreported, total int64
	if err := tx.QueryRowContext(ctx, `SELECT
		COALESCE((SELECT value FROM feedback_meta WHERE key='drop_alert_ns'), -1),
		COALESCE((SELECT value FROM feedback_meta WHERE key='dropped_unreported'), 0),
		COALESCE((SELECT value FROM feedback_meta WHERE key='dropped_total'), 0)`).Scan(&last, &unreported, &total); err != nil {
		return 0, 0, 0, fmt.Errorf("enqueue: drop state: %w", err)
	}
	unreported += int64(n)
	total += int64(n)
	var dr int
	var db int64
	extra := 0
	if o.cfg.AlertTopic != "" && (last < 0 || now-last >= o.cfg.DropAlertInterval.Nanoseconds()) {
		id := fmt.Sprintf("alert-outbox-drop-%s-%d", o.cfg.Device, now)
		payload := o.dropAlert(id, unreported, total, now)
		size := int64(len(payload))
		if records+1 > o.cfg.MaxRecords || bytes+size > o.cfg.MaxBytes {
			nr, nb, err := o.evict(ctx, tx, records+1-o.cfg.MaxRecords, bytes+size-o.cfg.MaxBytes)
			if err != nil {
				return 0, 0, 0, err
			}
			dr, db, extra = -nr, -nb, nr
			// The alert reports the drops made to fit it as well.
			total += int64(nr)
			payload = o.dropAlert(id, unreported+int64(nr), total, now)
			size = int64(len(payload))
		}
		nr, nb, _, err := insertOne(ctx, tx, Record{ID: id, Group: id, Kind: KindAlert, Topic: o.cfg.AlertTopic, Payload: payload, QoS: 1}, now)
		if err != nil {
			return 0, 0, 0, fmt.Errorf("drop alert: %w", err)
		}
		dr += nr
		db += nb
		last, unreported = now, 0
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO feedback_meta(key, value) VALUES ('drop_alert_ns', ?), ('dropped_unreported', ?), ('dropped_total', ?)
		ON CONFLICT(key) DO UPDATE SET value = excluded.value`, last, unreported, total); err != nil {
		return 0, 0, 0, fmt.Errorf("enqueue: drop state: %w", err)
	}
	return dr, db, extra, nil
}

// Depth reports the pending records and their payload bytes.
func (o *Outbox) Depth() (records int, bytes int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.records, o.bytes
}

// DroppedTotal is the number of feedback records dropped over the
// outbox's lifetime (persisted across restarts).
func (o *Outbox) DroppedTotal() int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.dropped
}

// Pending lists up to limit pending records in send order (for tests,
// inspection and the status command).
func (o *Outbox) Pending(ctx context.Context, limit int) ([]Record, error) {
	rows, err := o.db.QueryContext(ctx, `SELECT id, grp, kind, topic, payload, qos, retain FROM feedback_outbox ORDER BY priority, seq LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("outbox pending: %w", err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		var r Record
		var kind string
		if err := rows.Scan(&r.ID, &r.Group, &kind, &r.Topic, &r.Payload, &r.QoS, &r.Retain); err != nil {
			return nil, fmt.Errorf("outbox pending: %w", err)
		}
		r.Kind = Kind(kind)
		out = append(out, r)
	}
	return out, rows.Err()
}

// Start launches the sender goroutine publishing through pub. Close stops
// it.
func (o *Outbox) Start(pub Publisher) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return ErrClosed
	}
	if o.done != nil {
		return errors.New("outbox sender already started")
	}
	ctx, cancel := context.WithCancel(context.Background())
	o.cancel, o.done = cancel, make(chan struct{})
	go func() {
		defer close(o.done)
		o.run(ctx, pub)
	}()
	return nil
}

// Close stops the sender and refuses further Enqueue calls. Records still
// pending stay in the database for the next start. It waits for an
// in-flight batch (bounded by AckTimeout) or until ctx ends. The database
// is not closed: it belongs to the caller.
func (o *Outbox) Close(ctx context.Context) error {
	o.mu.Lock()
	o.closed = true
	cancel, done := o.cancel, o.done
	o.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("close outbox: %w", ctx.Err())
	}
}

type pending struct {
	seq      int64
	id       string
	kind     Kind
	topic    string
	payload  []byte
	qos      byte
	retain   bool
	attempts int
	tok      mqtt.Token
}

func (o *Outbox) run(ctx context.Context, pub Publisher) {
	bucket := newBucket(o.cfg.BytesPerSecond, o.cfg.BurstBytes, o.cfg.Now)
	idle := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-o.wake:
		case <-t.C:
		}
		return true
	}
	for ctx.Err() == nil {
		if !pub.IsConnectionOpen() {
			if !idle(100 * time.Millisecond) {
				return
			}
			continue
		}
		batch, wait, err := o.due(ctx, o.cfg.Window)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			o.cfg.Log.Error("outbox read failed", "err", err)
			if !idle(time.Second) {
				return
			}
			continue
		}
		if len(batch) == 0 {
			if !idle(wait) {
				return
			}
			continue
		}
		for i := range batch {
			if d := bucket.take(len(batch[i].payload)); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
				case <-t.C:
				}
			}
			if ctx.Err() != nil || !pub.IsConnectionOpen() {
				batch = batch[:i]
				break
			}
			b := &batch[i]
			b.tok = pub.Publish(b.topic, b.qos, b.retain, b.payload)
		}
		o.settle(pub, batch)
	}
}

// due returns the next records to send, or how long to wait when none is
// due yet.
func (o *Outbox) due(ctx context.Context, n int) ([]pending, time.Duration, error) {
	now := o.cfg.Now().UnixNano()
	rows, err := o.db.QueryContext(ctx, `SELECT seq, id, kind, topic, payload, qos, retain, attempts FROM feedback_outbox
		WHERE next_ns <= ? ORDER BY priority, seq LIMIT ?`, now, n)
	if err != nil {
		return nil, 0, err
	}
	var out []pending
	for rows.Next() {
		var p pending
		var kind string
		if err := rows.Scan(&p.seq, &p.id, &kind, &p.topic, &p.payload, &p.qos, &p.retain, &p.attempts); err != nil {
			rows.Close()
			return nil, 0, err
		}
		p.kind = Kind(kind)
		out = append(out, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(out) > 0 {
		return out, 0, err
	}
	var next sql.NullInt64
	if err := o.db.QueryRowContext(ctx, `SELECT MIN(next_ns) FROM feedback_outbox`).Scan(&next); err != nil {
		return nil, 0, err
	}
	wait := time.Second
	if next.Valid {
		if d := time.Duration(next.Int64 - now); d < wait {
			wait = max(d, 10*time.Millisecond)
		}
	}
	return nil, wait, nil
}

// settle waits for the PUBACKs of a batch, deletes the acknowledged rows
// and reschedules the others, in one transaction.
func (o *Outbox) settle(pub Publisher, batch []pending) {
	deadline := time.Now().Add(o.cfg.AckTimeout)
	var acked, failed []pending
	for _, p := range batch {
		ok := p.tok.WaitTimeout(max(time.Until(deadline), time.Millisecond))
		if ok && p.tok.Error() == nil {
			acked = append(acked, p)
			continue
		}
		failed = append(failed, p)
		o.metrics().PublishFailed(p.kind)
	}
	if len(acked) == 0 && len(failed) == 0 {
		return
	}
	connected := pub.IsConnectionOpen()
	now := o.cfg.Now()
	// A fresh context: an acknowledged record must be deleted even while
	// shutting down, or it would be sent again on the next start.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	o.mu.Lock()
	defer o.mu.Unlock()
	tx, err := o.db.BeginTx(ctx, nil)
	if err != nil {
		o.cfg.Log.Error("outbox settle failed; acknowledged records will be sent again", "err", err)
		return
	}
	defer tx.Rollback()
	var freedR int
	var freedB int64
	for _, p := range acked {
		res, err := tx.ExecContext(ctx, `DELETE FROM feedback_outbox WHERE seq=?`, p.seq)
		if err != nil {
			o.cfg.Log.Error("outbox settle failed; acknowledged records will be sent again", "err", err)
			return
		}
		if n, _ := res.RowsAffected(); n == 1 {
			freedR++
			freedB += int64(len(p.payload))
		}
	}
	for _, p := range failed {
		// A record lost with the connection is not the record's fault:
		// retry as soon as we are connected again.
		next := now
		if connected {
			next = now.Add(backoff(o.cfg.RetryMin, o.cfg.RetryMax, p.attempts))
		}
		if _, err := tx.ExecContext(ctx, `UPDATE feedback_outbox SET attempts=attempts+1, next_ns=? WHERE seq=?`, next.UnixNano(), p.seq); err != nil {
			o.cfg.Log.Error("outbox settle failed", "err", err)
			return
		}
	}
	if err := tx.Commit(); err != nil {
		o.cfg.Log.Error("outbox settle commit failed; acknowledged records will be sent again", "err", err)
		return
	}
	o.records -= freedR
	o.bytes -= freedB
	for _, p := range acked {
		o.metrics().Sent(p.kind, len(p.payload))
	}
	o.metrics().Depth(o.records, o.bytes)
	if len(failed) > 0 {
		o.cfg.Log.Debug("outbox publishes not acknowledged; will retry", "failed", len(failed), "connected", connected, "first_error", errString(failed[0].tok))
	}
}

func errString(t mqtt.Token) string {
	if t == nil || t.Error() == nil {
		return "timeout"
	}
	return t.Error().Error()
}

func backoff(lo, hi time.Duration, attempts int) time.Duration {
	d := lo
	for i := 0; i < attempts && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

// bucket is a byte token bucket on the injected clock.
type bucket struct {
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
	now    func() time.Time
}

func newBucket(rate, burst int, now func() time.Time) *bucket {
	return &bucket{rate: float64(rate), burst: float64(burst), tokens: float64(burst), last: now(), now: now}
}

// take consumes n bytes and returns how long to wait before sending them.
func (b *bucket) take(n int) time.Duration {
	if b.rate <= 0 {
		return 0
	}
	now := b.now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}
