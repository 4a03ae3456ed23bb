package feedback

import (
	"context"
	"database/sql"
	"encoding/csv"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/store"
)

// Reject reasons counted by the collector (CollectorMetrics.Rejected).
const (
	RejectBadJSON   = "bad_json"
	RejectSchema    = "wrong_schema"
	RejectOversize  = "oversize"
	RejectBadHash   = "bad_hash"
	RejectInvalid   = "invalid"
	RejectUnknownID = "unknown_id"
	RejectTopic     = "bad_topic"
	RejectConflict  = "conflict"
)

// ChunkMaxAge is how long Run keeps chunks of an incomplete sample.
const ChunkMaxAge = 7 * 24 * time.Hour

// PendingLabelMaxAge is how long Run keeps a label whose sample this
// collector has not received (it may come later, or it went to another
// worker of the shared group, which gets the label too), and
// MaxPendingLabels bounds how many are kept: past it the oldest give way.
const (
	PendingLabelMaxAge = 30 * 24 * time.Hour
	MaxPendingLabels   = 100000
)

// ErrConflict marks a message that contradicts what was already stored
// under the same id (a chunk for a different crop, a sample re-sent with a
// different crop): the first version is kept.
var ErrConflict = errors.New("conflicts with stored data")

// RejectReason maps a Handle error to its counter label ("" for errors
// that are not the message's fault, such as a failing disk).
func RejectReason(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, wire.ErrOversize):
		return RejectOversize
	case errors.Is(err, wire.ErrBadJSON):
		return RejectBadJSON
	case errors.Is(err, wire.ErrSchema):
		return RejectSchema
	case errors.Is(err, wire.ErrBadHash):
		return RejectBadHash
	case errors.Is(err, ErrUnknownID):
		return RejectUnknownID
	case errors.Is(err, mqttconn.ErrTopic):
		return RejectTopic
	case errors.Is(err, ErrConflict):
		return RejectConflict
	case errors.Is(err, wire.ErrInvalid):
		return RejectInvalid
	}
	return ""
}

// CollectorSchema is the schema of the collector's own database.
func CollectorSchema() store.Schema {
	return store.Schema{Owner: "feedback_collect", Migrations: []store.Migration{
		{SQL: `
CREATE TABLE collect_samples (
	id              TEXT PRIMARY KEY,
	device          TEXT NOT NULL,
	site            TEXT NOT NULL,
	slide_hash      TEXT NOT NULL,
	crop_sha256     TEXT NOT NULL,
	crop_format     TEXT NOT NULL,
	crop_bytes      INTEGER NOT NULL,
	chunks          INTEGER NOT NULL,
	p_parasitized   REAL NOT NULL,
	label_predicted TEXT NOT NULL,
	model_version   TEXT NOT NULL,
	time            TEXT NOT NULL,
	reason          TEXT NOT NULL,
	received_ns     INTEGER NOT NULL,
	complete        INTEGER NOT NULL
);
CREATE TABLE collect_chunks (
	sample_id   TEXT NOT NULL,
	idx         INTEGER NOT NULL,
	count       INTEGER NOT NULL,
	sha256      TEXT NOT NULL,
	data        BLOB NOT NULL,
	received_ns INTEGER NOT NULL,
	PRIMARY KEY (sample_id, idx)
);
CREATE TABLE collect_labels (
	feedback_id TEXT NOT NULL REFERENCES collect_samples(id),
	who         TEXT NOT NULL,
	label       TEXT NOT NULL,
	time        TEXT NOT NULL,
	received_ns INTEGER NOT NULL,
	PRIMARY KEY (feedback_id, who)
);`},
		// Labels of samples not (yet) received: applied when the sample
		// arrives, pruned after PendingLabelMaxAge.
		{SQL: `
CREATE TABLE collect_pending_labels (
	feedback_id TEXT NOT NULL,
	who         TEXT NOT NULL,
	label       TEXT NOT NULL,
	time        TEXT NOT NULL,
	received_ns INTEGER NOT NULL,
	PRIMARY KEY (feedback_id, who)
);`},
	}}
}

// CollectorConfig configures a Collector.
type CollectorConfig struct {
	// Dir holds collect.db and images/ (content-addressed by sha256).
	Dir string
	// Topics carries the fleet's topic root (zero value: scopewatch/v1).
	Topics  mqttconn.Topics
	Now     func() time.Time
	Log     *slog.Logger
	Metrics CollectorMetrics
}

// Collector is the receiving side run by tuning workers: it stores feedback
// samples and labels idempotently by id, reassembling chunked crops and
// verifying every image's sha256 before it is kept.
type Collector struct {
	cfg CollectorConfig
	db  *sql.DB
	mu  sync.Mutex // one message at a time: keeps reassembly simple

	subscribed atomic.Int64
}

type nopCollectorMetrics struct{}

func (nopCollectorMetrics) Rejected(string) {}
func (nopCollectorMetrics) Accepted(string) {}

// OpenCollector opens (creating) the dataset in cfg.Dir.
func OpenCollector(ctx context.Context, cfg CollectorConfig) (*Collector, error) {
	if cfg.Dir == "" {
		return nil, errors.New("open collector: empty dataset directory")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopCollectorMetrics{}
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "images"), 0o755); err != nil {
		return nil, fmt.Errorf("open collector: %w", err)
	}
	db, err := store.Open(ctx, filepath.Join(cfg.Dir, "collect.db"), store.Options{}, CollectorSchema())
	if err != nil {
		return nil, fmt.Errorf("open collector: %w", err)
	}
	return &Collector{cfg: cfg, db: db}, nil
}

// DB exposes the dataset database (read it, do not write it).
func (c *Collector) DB() *sql.DB { return c.db }

// Close closes the dataset database.
func (c *Collector) Close() error { return c.db.Close() }

// Handle stores one inbound message. It returns nil when the message is
// stored or was already stored (duplicates are normal: delivery is
// at-least-once). A malformed message returns an error for which
// RejectReason is non-empty: log it, count it and acknowledge it (it will
// never become valid). Any other error is local (disk, database): do not
// acknowledge, so the broker delivers the message again.
func (c *Collector) Handle(ctx context.Context, topic string, payload []byte) error {
	err := c.handle(ctx, topic, payload)
	if r := RejectReason(err); r != "" {
		c.cfg.Metrics.Rejected(r)
		c.cfg.Log.Warn("rejected inbound message", "topic", topic, "bytes", len(payload), "reason", r, "err", err)
	}
	return err
}

func (c *Collector) handle(ctx context.Context, topic string, payload []byte) error {
	if len(payload) > wire.MaxPayload {
		return fmt.Errorf("%w: %d bytes", wire.ErrOversize, len(payload))
	}
	site, device, kind, err := c.cfg.Topics.ParseDevice(topic)
	if err != nil {
		return err
	}
	schema, err := wire.PeekSchema(payload)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case kind == mqttconn.KindFeedback && schema == wire.SampleSchema:
		s, err := wire.DecodeSample(payload)
		if err != nil {
			return err
		}
		if s.Site != site || s.Device != device {
			return fmt.Errorf("%w: sample %s claims %s/%s but came on %s", wire.ErrInvalid, s.ID, s.Site, s.Device, topic)
		}
		return c.storeSample(ctx, s)
	case kind == mqttconn.KindFeedback && schema == wire.ChunkSchema:
		ch, err := wire.DecodeChunk(payload)
		if err != nil {
			return err
		}
		return c.storeChunk(ctx, ch)
	case kind == mqttconn.KindLabel && schema == wire.LabelSchema:
		l, err := wire.DecodeLabel(payload)
		if err != nil {
			return err
		}
		return c.storeLabel(ctx, l)
	}
	return fmt.Errorf("%w: %q on a %s topic", wire.ErrSchema, schema, kind)
}

func (c *Collector) storeSample(ctx context.Context, s wire.Sample) error {
	var sha string
	err := c.db.QueryRowContext(ctx, `SELECT crop_sha256 FROM collect_samples WHERE id=?`, s.ID).Scan(&sha)
	switch {
	case err == nil:
		if sha != s.Crop.SHA256 {
			return fmt.Errorf("%w: sample %s was stored with crop %s, now %s", ErrConflict, s.ID, sha, s.Crop.SHA256)
		}
		c.cfg.Metrics.Accepted("duplicate")
		return nil
	case !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("store sample %s: %w", s.ID, err)
	}
	complete := 0
	if len(s.Crop.Data) > 0 {
		if err := c.writeImage(s.Crop.SHA256, s.Crop.Format, s.Crop.Data); err != nil {
			return err
		}
		complete = 1
	}
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store sample %s: %w", s.ID, err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO collect_samples(id, device, site, slide_hash, crop_sha256, crop_format, crop_bytes, chunks,
		p_parasitized, label_predicted, model_version, time, reason, received_ns, complete) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		s.ID, s.Device, s.Site, s.SlideHash, s.Crop.SHA256, s.Crop.Format, s.Crop.Bytes, s.Crop.Chunks,
		s.PParasitized, s.LabelPredicted, s.ModelVersion, s.Time.UTC().Format(time.RFC3339Nano), s.Reason,
		c.cfg.Now().UnixNano(), complete); err != nil {
		return fmt.Errorf("store sample %s: %w", s.ID, err)
	}
	// Labels that came before their sample.
	if _, err := tx.ExecContext(ctx, `INSERT INTO collect_labels(feedback_id, who, label, time, received_ns)
		SELECT feedback_id, who, label, time, received_ns FROM collect_pending_labels WHERE feedback_id=?`, s.ID); err != nil {
		return fmt.Errorf("store sample %s: pending labels: %w", s.ID, err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM collect_pending_labels WHERE feedback_id=?`, s.ID); err != nil {
		return fmt.Errorf("store sample %s: pending labels: %w", s.ID, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store sample %s: %w", s.ID, err)
	}
	c.cfg.Metrics.Accepted("sample")
	if complete == 0 {
		return c.assemble(ctx, s.ID)
	}
	return nil
}

func (c *Collector) storeChunk(ctx context.Context, ch wire.Chunk) error {
	var sha string
	var count, complete int
	err := c.db.QueryRowContext(ctx, `SELECT crop_sha256, chunks, complete FROM collect_samples WHERE id=?`, ch.SampleID).Scan(&sha, &count, &complete)
	switch {
	case err == nil:
		if sha != ch.SHA256 || count != ch.Count {
			return fmt.Errorf("%w: chunk %d of %s does not match its sample", ErrConflict, ch.Index, ch.SampleID)
		}
		if complete == 1 {
			c.cfg.Metrics.Accepted("duplicate")
			return nil
		}
	case !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("store chunk: %w", err)
	}
	// Chunks may arrive before their sample; they wait in the table.
	res, err := c.db.ExecContext(ctx, `INSERT INTO collect_chunks(sample_id, idx, count, sha256, data, received_ns) VALUES (?,?,?,?,?,?)
		ON CONFLICT DO NOTHING`, ch.SampleID, ch.Index, ch.Count, ch.SHA256, ch.Data, c.cfg.Now().UnixNano())
	if err != nil {
		return fmt.Errorf("store chunk: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		c.cfg.Metrics.Accepted("duplicate")
		return nil
	}
	c.cfg.Metrics.Accepted("chunk")
	return c.assemble(ctx, ch.SampleID)
}

// assemble completes a chunked sample once its header and all chunks are
// here: concatenates, verifies size and sha256, writes the image.
func (c *Collector) assemble(ctx context.Context, id string) error {
	var sha, format string
	var size, count int
	err := c.db.QueryRowContext(ctx, `SELECT crop_sha256, crop_format, crop_bytes, chunks FROM collect_samples WHERE id=? AND complete=0`, id).Scan(&sha, &format, &size, &count)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("assemble %s: %w", id, err)
	}
	rows, err := c.db.QueryContext(ctx, `SELECT idx, sha256, data FROM collect_chunks WHERE sample_id=? ORDER BY idx`, id)
	if err != nil {
		return fmt.Errorf("assemble %s: %w", id, err)
	}
	var buf []byte
	n, mismatch := 0, false
	for rows.Next() {
		var idx int
		var csha string
		var data []byte
		if err := rows.Scan(&idx, &csha, &data); err != nil {
			rows.Close()
			return fmt.Errorf("assemble %s: %w", id, err)
		}
		if idx != n || csha != sha {
			mismatch = true
		}
		buf = append(buf, data...)
		n++
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("assemble %s: %w", id, err)
	}
	if n < count {
		return nil // more to come
	}
	if mismatch || len(buf) != size || wire.SHA256Hex(buf) != sha {
		// Throw the chunks away: a correct copy can still arrive.
		c.db.ExecContext(ctx, `DELETE FROM collect_chunks WHERE sample_id=?`, id)
		return fmt.Errorf("%w: reassembled crop of %s (%d bytes) does not match sha256 %s", wire.ErrBadHash, id, len(buf), sha)
	}
	if f, err := wire.CropFormat(buf); err != nil || f != format {
		c.db.ExecContext(ctx, `DELETE FROM collect_chunks WHERE sample_id=?`, id)
		return fmt.Errorf("%w: reassembled crop of %s is not %s", wire.ErrInvalid, id, format)
	}
	if err := c.writeImage(sha, format, buf); err != nil {
		return err
	}
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("assemble %s: %w", id, err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `UPDATE collect_samples SET complete=1 WHERE id=?`, id); err != nil {
		return fmt.Errorf("assemble %s: %w", id, err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM collect_chunks WHERE sample_id=?`, id); err != nil {
		return fmt.Errorf("assemble %s: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("assemble %s: %w", id, err)
	}
	c.cfg.Metrics.Accepted("assembled")
	return nil
}

func (c *Collector) storeLabel(ctx context.Context, l wire.Label) error {
	var n int
	if err := c.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM collect_samples WHERE id=?`, l.FeedbackID).Scan(&n); err != nil {
		return fmt.Errorf("store label: %w", err)
	}
	table, accepted := "collect_labels", "label"
	if n == 0 {
		// Kept until its sample comes (a label can overtake it, or the
		// sample went to another worker), within a bound: with shared
		// workers most pending labels belong to others' samples, so the
		// oldest give way rather than the newest being refused.
		if _, err := c.db.ExecContext(ctx, `DELETE FROM collect_pending_labels WHERE rowid IN (
			SELECT rowid FROM collect_pending_labels ORDER BY received_ns
			LIMIT max(0, (SELECT COUNT(*) FROM collect_pending_labels) - ?))`, MaxPendingLabels-1); err != nil {
			return fmt.Errorf("store label: %w", err)
		}
		table, accepted = "collect_pending_labels", "label_pending"
	}
	// A newer label from the same person replaces the older one; a
	// redelivered label changes nothing.
	if _, err := c.db.ExecContext(ctx, `INSERT INTO `+table+`(feedback_id, who, label, time, received_ns) VALUES (?,?,?,?,?)
		ON CONFLICT(feedback_id, who) DO UPDATE SET label=excluded.label, time=excluded.time, received_ns=excluded.received_ns
		WHERE excluded.time > `+table+`.time`,
		l.FeedbackID, l.Who, l.Label, l.Time.UTC().Format(time.RFC3339Nano), c.cfg.Now().UnixNano()); err != nil {
		return fmt.Errorf("store label: %w", err)
	}
	c.cfg.Metrics.Accepted(accepted)
	return nil
}

// PrunePendingLabels deletes labels that waited longer than maxAge for
// their sample. It returns how many were deleted.
func (c *Collector) PrunePendingLabels(ctx context.Context, maxAge time.Duration) (int64, error) {
	return c.pruneOlder(ctx, "collect_pending_labels", maxAge, "prune pending labels")
}

// PruneChunks deletes chunks that waited longer than maxAge for the rest of
// their sample (the device dropped the sample, or its other chunks went to
// another worker of the shared group). It returns how many were deleted.
func (c *Collector) PruneChunks(ctx context.Context, maxAge time.Duration) (int64, error) {
	return c.pruneOlder(ctx, "collect_chunks", maxAge, "prune chunks")
}

// pruneOlder deletes the rows of table (one of the collector's own, with a
// received_ns column) received more than maxAge ago.
func (c *Collector) pruneOlder(ctx context.Context, table string, maxAge time.Duration, what string) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	res, err := c.db.ExecContext(ctx, `DELETE FROM `+table+` WHERE received_ns < ?`, c.cfg.Now().Add(-maxAge).UnixNano())
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// ImagePath is where an image with this sha256 and format is stored.
func (c *Collector) ImagePath(sha, format string) string {
	return filepath.Join(c.cfg.Dir, "images", sha[:2], sha+"."+ext(format))
}

func ext(format string) string {
	if format == "jpeg" {
		return "jpg"
	}
	return "png"
}

// writeImage stores data content-addressed, durably (write, fsync, rename,
// fsync dir), before the database row that points at it is committed.
func (c *Collector) writeImage(sha, format string, data []byte) error {
	path := c.ImagePath(sha, format)
	if st, err := os.Stat(path); err == nil && st.Size() == int64(len(data)) {
		return nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write image: %w", err)
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("write image: %w", err)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write image %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write image: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// CollectorStats summarises the dataset.
type CollectorStats struct {
	Samples, Complete, Labelled, PendingChunks int
	// PendingLabels wait for a sample this collector has not received.
	PendingLabels int
}

// Stats counts what the dataset holds.
func (c *Collector) Stats(ctx context.Context) (CollectorStats, error) {
	var s CollectorStats
	err := c.db.QueryRowContext(ctx, `SELECT
		(SELECT COUNT(*) FROM collect_samples),
		(SELECT COUNT(*) FROM collect_samples WHERE complete=1),
		(SELECT COUNT(DISTINCT feedback_id) FROM collect_labels),
		(SELECT COUNT(*) FROM collect_chunks),
		(SELECT COUNT(*) FROM collect_pending_labels)`).Scan(&s.Samples, &s.Complete, &s.Labelled, &s.PendingChunks, &s.PendingLabels)
	if err != nil {
		return s, fmt.Errorf("collector stats: %w", err)
	}
	return s, nil
}

// Verify re-hashes every stored image of complete samples and returns the
// ids whose image is missing or does not match.
func (c *Collector) Verify(ctx context.Context) (checked int, bad []string, err error) {
	rows, err := c.db.QueryContext(ctx, `SELECT id, crop_sha256, crop_format FROM collect_samples WHERE complete=1`)
	if err != nil {
		return 0, nil, fmt.Errorf("verify: %w", err)
	}
	type item struct{ id, sha, format string }
	var items []item
	for rows.Next() {
		var it item
		if err := rows.Scan(&it.id, &it.sha, &it.format); err != nil {
			rows.Close()
			return 0, nil, fmt.Errorf("verify: %w", err)
		}
		items = append(items, it)
	}
	rows.Close()
	for _, it := range items {
		data, err := os.ReadFile(c.ImagePath(it.sha, it.format))
		if err != nil || wire.SHA256Hex(data) != it.sha {
			bad = append(bad, it.id)
		}
	}
	return len(items), bad, rows.Err()
}

// Export writes every complete, labelled sample to outDir: images under
// outDir/images/ and labels.csv with columns path,label,slide,device (path
// relative to outDir; slide is the slide hash, so splits can keep a slide's
// cells together, and device lets them keep a device's). When several
// people labelled a sample, the latest label wins. It returns the number
// of rows written.
func (c *Collector) Export(ctx context.Context, outDir string) (int, error) {
	return c.export(ctx, outDir, "")
}

// ExportSite is Export for the samples of one site: what a retune of that
// site's model trains on.
func (c *Collector) ExportSite(ctx context.Context, outDir, site string) (int, error) {
	if site == "" {
		return 0, errors.New("export: empty site")
	}
	return c.export(ctx, outDir, site)
}

func (c *Collector) export(ctx context.Context, outDir, site string) (int, error) {
	if err := os.MkdirAll(filepath.Join(outDir, "images"), 0o755); err != nil {
		return 0, fmt.Errorf("export: %w", err)
	}
	rows, err := c.db.QueryContext(ctx, `SELECT s.id, s.crop_sha256, s.crop_format, s.slide_hash, s.device,
		(SELECT l.label FROM collect_labels l WHERE l.feedback_id = s.id ORDER BY l.time DESC, l.who LIMIT 1)
		FROM collect_samples s WHERE s.complete=1 AND (?1 = '' OR s.site = ?1)
		AND EXISTS (SELECT 1 FROM collect_labels l WHERE l.feedback_id = s.id)
		ORDER BY s.id`, site)
	if err != nil {
		return 0, fmt.Errorf("export: %w", err)
	}
	type row struct{ id, sha, format, slide, device, label string }
	var out []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.id, &r.sha, &r.format, &r.slide, &r.device, &r.label); err != nil {
			rows.Close()
			return 0, fmt.Errorf("export: %w", err)
		}
		out = append(out, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("export: %w", err)
	}
	csvPath := filepath.Join(outDir, "labels.csv")
	f, err := os.Create(csvPath + ".tmp")
	if err != nil {
		return 0, fmt.Errorf("export: %w", err)
	}
	defer os.Remove(csvPath + ".tmp")
	w := csv.NewWriter(f)
	w.Write([]string{"path", "label", "slide", "device"})
	for _, r := range out {
		rel := filepath.Join("images", r.sha+"."+ext(r.format))
		dst := filepath.Join(outDir, rel)
		if _, err := os.Stat(dst); err != nil {
			src := c.ImagePath(r.sha, r.format)
			if err := os.Link(src, dst); err != nil {
				data, rerr := os.ReadFile(src)
				if rerr != nil {
					f.Close()
					return 0, fmt.Errorf("export %s: %w", r.id, rerr)
				}
				if err := os.WriteFile(dst, data, 0o644); err != nil {
					f.Close()
					return 0, fmt.Errorf("export %s: %w", r.id, err)
				}
			}
		}
		w.Write([]string{filepath.ToSlash(rel), r.label, r.slide, r.device})
	}
	w.Flush()
	if err := errors.Join(w.Error(), f.Close()); err != nil {
		return 0, fmt.Errorf("export: %w", err)
	}
	if err := os.Rename(csvPath+".tmp", csvPath); err != nil {
		return 0, fmt.Errorf("export: %w", err)
	}
	return len(out), nil
}

// Subscribe registers the collector's subscriptions on a connected client:
// feedback of every site and device through the shared group (empty
// group: a plain subscription), and labels always plainly: a label must
// reach whichever worker got its sample, so every worker takes every
// label (those of samples it lacks wait as pending labels). Call it from the OnConnect hook so
// that subscriptions survive a broker that lost its state. Messages are
// acknowledged only after they are stored, or when they are malformed; the
// client must be built with AutoAckDisabled.
func (c *Collector) Subscribe(ctx context.Context, client mqtt.Client, group string) error {
	filters := map[string]byte{}
	for k, g := range map[mqttconn.Kind]string{mqttconn.KindFeedback: group, mqttconn.KindLabel: ""} {
		f, err := c.cfg.Topics.SharedFilter(g, k)
		if err != nil {
			return err
		}
		filters[f] = 1
	}
	tok := client.SubscribeMultiple(filters, func(_ mqtt.Client, m mqtt.Message) {
		err := c.Handle(ctx, m.Topic(), m.Payload())
		if err != nil && RejectReason(err) == "" {
			c.cfg.Log.Error("could not store inbound message; leaving it unacknowledged for redelivery", "topic", m.Topic(), "err", err)
			return
		}
		m.Ack()
	})
	if err := mqttconn.Wait(tok, 10*time.Second); err != nil {
		return fmt.Errorf("subscribe %s: %v", strings.Join(slices.Sorted(maps.Keys(filters)), ", "), err)
	}
	c.subscribed.Add(1)
	return nil
}

// Subscriptions counts successful Subscribe calls (one per connection):
// readiness for health checks and tests.
func (c *Collector) Subscriptions() int64 { return c.subscribed.Load() }

// Run connects with cfg (AutoAckDisabled and a persistent session are
// forced), subscribes on every connection, and handles messages until ctx
// ends.
func (c *Collector) Run(ctx context.Context, cfg mqttconn.Config, group string) error {
	cfg.AutoAckDisabled = true
	cfg.CleanSession = false
	client, err := mqttconn.New(cfg, c.cfg.Log, mqttconn.Hooks{OnConnect: func(cl mqtt.Client) {
		// Subscribing waits for SUBACK, which the network loop delivers:
		// do it off the connect callback.
		go func() {
			if err := c.Subscribe(ctx, cl, group); err != nil && ctx.Err() == nil {
				c.cfg.Log.Error("collector subscribe failed", "err", err)
			}
		}()
	}})
	if err != nil {
		return fmt.Errorf("collect: %w", err)
	}
	prune := time.NewTicker(time.Hour)
	defer prune.Stop()
	for {
		select {
		case <-ctx.Done():
			client.Disconnect(500)
			return nil
		case <-prune.C:
			if n, err := c.PruneChunks(ctx, ChunkMaxAge); err != nil {
				c.cfg.Log.Error("prune chunks", "err", err)
			} else if n > 0 {
				c.cfg.Log.Warn("dropped chunks of samples that never completed", "chunks", n, "max_age", ChunkMaxAge)
			}
			if n, err := c.PrunePendingLabels(ctx, PendingLabelMaxAge); err != nil {
				c.cfg.Log.Error("prune pending labels", "err", err)
			} else if n > 0 {
				c.cfg.Log.Info("dropped labels whose sample never reached this collector", "labels", n, "max_age", PendingLabelMaxAge)
			}
		}
	}
}
