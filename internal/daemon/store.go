package daemon

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/scopewatch/scopewatch/drift"
	"github.com/scopewatch/scopewatch/feedback"
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/store"
)

// serveSchema holds the daemon's tables: slides, images, per-cell
// predictions, events, a small key/value meta table (boot sequence) and the
// drift detector's saved state (drift_state). What the daemon publishes goes
// to the one outbox, feedback.Outbox's feedback_outbox, in the same
// transaction that records it (EnqueueTx). Until migration 3 the daemon had
// an outbox of its own (serve_outbox) and a relay into the shared one;
// migration 3 hands its unsent rows over and drops it.
var serveSchema = store.Schema{
	Owner: "serve",
	Migrations: []store.Migration{{SQL: `
CREATE TABLE serve_meta (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);
CREATE TABLE slides (
	id              INTEGER PRIMARY KEY,
	slide           TEXT NOT NULL UNIQUE,
	state           TEXT NOT NULL CHECK (state IN ('open', 'complete')),
	images          INTEGER NOT NULL DEFAULT 0,
	cells           INTEGER NOT NULL DEFAULT 0,
	infected        INTEGER NOT NULL DEFAULT 0,
	created_at      INTEGER NOT NULL,
	last_image_at   INTEGER NOT NULL,
	completed_at    INTEGER,
	stopping_reason TEXT,
	model_version   TEXT,
	parasitemia_pct REAL,
	ci_low_pct      REAL,
	ci_high_pct     REAL,
	ci_method       TEXT,
	result_id       TEXT UNIQUE
);
CREATE INDEX slides_open ON slides(state, last_image_at);
CREATE TABLE images (
	id            INTEGER PRIMARY KEY,
	slide_id      INTEGER NOT NULL REFERENCES slides(id) ON DELETE CASCADE,
	name          TEXT NOT NULL,
	source        TEXT NOT NULL,
	kind          TEXT NOT NULL,
	width         INTEGER NOT NULL,
	height        INTEGER NOT NULL,
	cells         INTEGER NOT NULL,
	infected      INTEGER NOT NULL,
	model_version TEXT NOT NULL,
	created_at    INTEGER NOT NULL,
	UNIQUE (slide_id, name)
);
CREATE TABLE cell_predictions (
	id            INTEGER PRIMARY KEY,
	slide_id      INTEGER NOT NULL REFERENCES slides(id) ON DELETE CASCADE,
	image_id      INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
	x             INTEGER NOT NULL,
	y             INTEGER NOT NULL,
	w             INTEGER NOT NULL,
	h             INTEGER NOT NULL,
	p_parasitized REAL NOT NULL,
	label         TEXT NOT NULL,
	model_version TEXT NOT NULL,
	created_at    INTEGER NOT NULL
);
CREATE INDEX cell_predictions_image ON cell_predictions(image_id);
CREATE INDEX cell_predictions_created ON cell_predictions(created_at);
CREATE TABLE events (
	id         INTEGER PRIMARY KEY,
	at         INTEGER NOT NULL,
	level      TEXT NOT NULL,
	kind       TEXT NOT NULL,
	slide      TEXT,
	detail     TEXT NOT NULL
);
CREATE INDEX events_at ON events(at);
CREATE TABLE serve_outbox (
	id         TEXT PRIMARY KEY,
	topic      TEXT NOT NULL,
	payload    BLOB NOT NULL,
	priority   INTEGER NOT NULL,
	created_at INTEGER NOT NULL,
	relayed_at INTEGER
);
CREATE INDEX serve_outbox_pending ON serve_outbox(relayed_at, priority, created_at);
`}, {SQL: `
CREATE TABLE drift_state (
	key           TEXT PRIMARY KEY,
	model_version TEXT NOT NULL,
	value         BLOB NOT NULL,
	saved_at      INTEGER NOT NULL
);
`}, {Func: moveServeOutbox}, {SQL: `
CREATE TABLE serve_attempts (
	path     TEXT PRIMARY KEY,
	attempts INTEGER NOT NULL,
	last_at  INTEGER NOT NULL
);
`}, {SQL: `
-- What a slide's verdict needs besides its counts: images refused before
-- they were counted, fields with too few cells, and the first drift
-- episode open while its cells were counted.
ALTER TABLE slides ADD COLUMN refused INTEGER NOT NULL DEFAULT 0;
ALTER TABLE slides ADD COLUMN fields INTEGER NOT NULL DEFAULT 0;
ALTER TABLE slides ADD COLUMN sparse_fields INTEGER NOT NULL DEFAULT 0;
ALTER TABLE slides ADD COLUMN flagged TEXT NOT NULL DEFAULT '';
ALTER TABLE slides ADD COLUMN verdict TEXT;
`}, {SQL: `
-- Running sums of the crops' appearance statistics (drift.SlideAppearance
-- as JSON), for the slide quality gate at completion.
ALTER TABLE slides ADD COLUMN appearance TEXT NOT NULL DEFAULT '';
`}},
}

// moveServeOutbox hands the rows serve_outbox had not relayed to the one
// outbox (through feedback.InsertTx: that table is the feedback package's
// to write) and drops serve_outbox. It runs once, in the migration's
// transaction, so a crash leaves either the old table or the moved rows.
func moveServeOutbox(ctx context.Context, tx *sql.Tx) error {
	rows, err := tx.QueryContext(ctx, `SELECT id, topic, payload, priority FROM serve_outbox WHERE relayed_at IS NULL ORDER BY priority, created_at, id`)
	if err != nil {
		return fmt.Errorf("move serve_outbox: %w", err)
	}
	var recs []feedback.Record
	for rows.Next() {
		var r feedback.Record
		var prio int
		if err := rows.Scan(&r.ID, &r.Topic, &r.Payload, &prio); err != nil {
			rows.Close()
			return fmt.Errorf("move serve_outbox: %w", err)
		}
		// serve_outbox's priorities: 0 alert, 1 result.
		r.Kind, r.QoS = feedback.KindResult, 1
		if prio == 0 {
			r.Kind = feedback.KindAlert
		}
		recs = append(recs, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("move serve_outbox: %w", err)
	}
	if err := feedback.InsertTx(ctx, tx, time.Now(), recs...); err != nil {
		return fmt.Errorf("move serve_outbox: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `DROP TABLE serve_outbox`); err != nil {
		return fmt.Errorf("move serve_outbox: %w", err)
	}
	return nil
}

// txOutbox records outbound messages in the caller's transaction;
// feedback.Outbox is the one.
type txOutbox interface {
	EnqueueTx(ctx context.Context, tx *sql.Tx, recs ...feedback.Record) (committed func(), err error)
}

var _ txOutbox = (*feedback.Outbox)(nil)

// errSlideComplete is returned when an image arrives for a slide that was
// already summarised; the slide's count is final.
var errSlideComplete = errors.New("slide already complete")

// errDuplicateImage is returned when the same image name was already stored
// for the slide (a file re-seen after a crash between commit and move).
var errDuplicateImage = errors.New("image already processed")

// dbStore is the daemon's tables. out, when the daemon publishes (MQTT
// enabled), records each result and alert in the transaction that makes it;
// nil records nothing to send.
type dbStore struct {
	db  *sql.DB
	now func() time.Time
	out txOutbox
	// instance is this database's random id, made once: result ids carry
	// it, so a wiped or reinstalled database never repeats one.
	instance string
}

// newDBStore reads the database's instance id, making it from random on
// first use.
func newDBStore(ctx context.Context, db *sql.DB, now func() time.Time, out txOutbox, random io.Reader) (*dbStore, error) {
	s := &dbStore{db: db, now: now, out: out}
	inst, ok, err := s.meta(ctx, "instance")
	if err != nil {
		return nil, fmt.Errorf("instance id: %w", err)
	}
	if !ok {
		b := make([]byte, 6)
		if _, err := io.ReadFull(random, b); err != nil {
			return nil, fmt.Errorf("instance id: %w", err)
		}
		inst = hex.EncodeToString(b)
		if err := s.setMeta(ctx, "instance", inst); err != nil {
			return nil, fmt.Errorf("instance id: %w", err)
		}
	}
	s.instance = inst
	return s, nil
}

// openServeDB opens the daemon's database with its tables and the outbox's
// (the outbox's first: migration 3 moves rows into it).
func openServeDB(ctx context.Context, path string) (*sql.DB, error) {
	// systemd's StateDirectory makes the folder; a run by hand should not
	// fail only because it does not exist yet.
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	return store.Open(ctx, path, store.Options{}, feedback.Schema(), serveSchema)
}

// enqueueTx records recs in tx; the returned func, called after tx
// commits, tells the outbox. Without an outbox it records nothing.
func (s *dbStore) enqueueTx(ctx context.Context, tx *sql.Tx, recs ...feedback.Record) (func(), error) {
	if s.out == nil || len(recs) == 0 {
		return func() {}, nil
	}
	return s.out.EnqueueTx(ctx, tx, recs...)
}

func (s *dbStore) Close() error { return s.db.Close() }

// nextBoot increments and returns the persisted boot sequence.
func (s *dbStore) nextBoot(ctx context.Context) (int64, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("boot sequence: %w", err)
	}
	defer tx.Rollback()
	var v string
	var n int64
	switch err := tx.QueryRowContext(ctx, `SELECT value FROM serve_meta WHERE key = 'boot_seq'`).Scan(&v); {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return 0, fmt.Errorf("boot sequence: %w", err)
	default:
		n, _ = strconv.ParseInt(v, 10, 64)
	}
	n++
	if _, err := tx.ExecContext(ctx, `INSERT INTO serve_meta(key, value) VALUES ('boot_seq', ?)
		ON CONFLICT(key) DO UPDATE SET value = excluded.value`, strconv.FormatInt(n, 10)); err != nil {
		return 0, fmt.Errorf("boot sequence: %w", err)
	}
	return n, tx.Commit()
}

// slideRow is a slide as stored.
type slideRow struct {
	ID            int64
	Slide         string
	State         string
	Images, Cells int
	Infected      int
	// Refused images, fields among the images and of those the sparse
	// ones (fewer than slides.min_field_cells), and the drift episode open
	// while cells were counted ("" when none).
	Refused, Fields, SparseFields int
	Flagged                       string
	CreatedAt                     time.Time
	LastImageAt                   time.Time
	CompletedAt                   time.Time
	StoppingReason                string
	ModelVersion                  string
	ResultID                      string
	// Scores are the slide's cells' p(parasitized), for the label-free
	// estimate; loaded by slideScores, not part of the slides row.
	Scores []float64
	// Appearance sums the crops' appearance statistics, for the slide
	// quality gate.
	Appearance drift.SlideAppearance
}

// slideScores reads the scores of a slide's counted cells, in the order
// they were counted.
func (s *dbStore) slideScores(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, id int64) ([]float64, error) {
	rows, err := q.QueryContext(ctx, `SELECT p_parasitized FROM cell_predictions WHERE slide_id = ? ORDER BY id`, id)
	if err != nil {
		return nil, fmt.Errorf("read slide scores: %w", err)
	}
	defer rows.Close()
	var out []float64
	for rows.Next() {
		var p float64
		if err := rows.Scan(&p); err != nil {
			return nil, fmt.Errorf("read slide scores: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read slide scores: %w", err)
	}
	return out, nil
}

func (s *dbStore) getSlide(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, slide string) (slideRow, bool, error) {
	var r slideRow
	var created, last int64
	var completed sql.NullInt64
	var reason, model, rid sql.NullString
	var appearance string
	err := q.QueryRowContext(ctx, `SELECT id, slide, state, images, cells, infected, created_at, last_image_at,
		completed_at, stopping_reason, model_version, result_id, refused, fields, sparse_fields, flagged, appearance FROM slides WHERE slide = ?`, slide).
		Scan(&r.ID, &r.Slide, &r.State, &r.Images, &r.Cells, &r.Infected, &created, &last, &completed, &reason, &model, &rid,
			&r.Refused, &r.Fields, &r.SparseFields, &r.Flagged, &appearance)
	if errors.Is(err, sql.ErrNoRows) {
		return slideRow{}, false, nil
	}
	if err != nil {
		return slideRow{}, false, fmt.Errorf("read slide %s: %w", slide, err)
	}
	r.CreatedAt = time.UnixMilli(created).UTC()
	r.LastImageAt = time.UnixMilli(last).UTC()
	if completed.Valid {
		r.CompletedAt = time.UnixMilli(completed.Int64).UTC()
	}
	r.StoppingReason, r.ModelVersion, r.ResultID = reason.String, model.String, rid.String
	if appearance != "" {
		// Written by this package only; a damaged value loses the gate for
		// this slide, not the slide.
		if err := json.Unmarshal([]byte(appearance), &r.Appearance); err != nil {
			r.Appearance = drift.SlideAppearance{}
		}
	}
	return r, true, nil
}

// imageRecord is one analysed image to persist.
type imageRecord struct {
	Slide, Name, Source, Kind string
	Width, Height             int
	Cells                     []cellResult
	ModelVersion              string
	// Path, for an inbox file, is the attempt (beginAttempt) this image
	// ends: cleared in the same transaction that stores it.
	Path string
	// Sparse marks a field with fewer cells than slides.min_field_cells;
	// Flagged names the drift episode open when it was counted.
	Sparse  bool
	Flagged string
}

// storedImage is what recordImage reports back.
type storedImage struct {
	Slide     slideRow // after this image
	Completed *slideSummary
}

// recordImage stores one image and its cells and updates the slide's counts
// in one transaction; when target > 0 and the slide reaches it, the slide is
// completed and its result queued in the same transaction, so a crash at any
// point leaves either nothing or everything.
func (s *dbStore) recordImage(ctx context.Context, rec imageRecord, target int, summarise func(slideRow, string) (slideSummary, []feedback.Record)) (storedImage, error) {
	now := s.now().UnixMilli()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return storedImage{}, fmt.Errorf("store image: %w", err)
	}
	defer tx.Rollback()
	sl, ok, err := s.getSlide(ctx, tx, rec.Slide)
	if err != nil {
		return storedImage{}, err
	}
	if !ok {
		res, err := tx.ExecContext(ctx, `INSERT INTO slides(slide, state, created_at, last_image_at) VALUES (?, 'open', ?, ?)`, rec.Slide, now, now)
		if err != nil {
			return storedImage{}, fmt.Errorf("store image: create slide: %w", err)
		}
		sl.ID, _ = res.LastInsertId()
		sl.Slide, sl.State = rec.Slide, "open"
	}
	if sl.State == "complete" {
		return storedImage{Slide: sl}, fmt.Errorf("%w: %s (%s)", errSlideComplete, rec.Slide, sl.StoppingReason)
	}
	infected := 0
	for _, c := range rec.Cells {
		if c.Parasitized {
			infected++
		}
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO images(slide_id, name, source, kind, width, height, cells, infected, model_version, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(slide_id, name) DO NOTHING`,
		sl.ID, rec.Name, rec.Source, rec.Kind, rec.Width, rec.Height, len(rec.Cells), infected, rec.ModelVersion, now)
	if err != nil {
		return storedImage{}, fmt.Errorf("store image: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return storedImage{Slide: sl}, fmt.Errorf("%w: %s/%s", errDuplicateImage, rec.Slide, rec.Name)
	}
	imageID, _ := res.LastInsertId()
	if len(rec.Cells) > 0 {
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO cell_predictions(slide_id, image_id, x, y, w, h, p_parasitized, label, model_version, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return storedImage{}, fmt.Errorf("store cells: %w", err)
		}
		for _, c := range rec.Cells {
			if _, err := stmt.ExecContext(ctx, sl.ID, imageID, c.Box.Min.X, c.Box.Min.Y, c.Box.Dx(), c.Box.Dy(), c.P, c.Label, rec.ModelVersion, now); err != nil {
				stmt.Close()
				return storedImage{}, fmt.Errorf("store cells: %w", err)
			}
		}
		stmt.Close()
	}
	appearance, err := addAppearance(&sl.Appearance, rec.Cells)
	if err != nil {
		return storedImage{}, fmt.Errorf("store image: %w", err)
	}
	field, sparse := 0, 0
	if rec.Kind == "field" {
		field = 1
		if rec.Sparse {
			sparse = 1
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE slides SET images = images + 1, cells = cells + ?, infected = infected + ?,
		last_image_at = ?, model_version = ?, fields = fields + ?, sparse_fields = sparse_fields + ?,
		flagged = CASE WHEN flagged = '' THEN ? ELSE flagged END, appearance = ? WHERE id = ?`,
		len(rec.Cells), infected, now, rec.ModelVersion, field, sparse, rec.Flagged, appearance, sl.ID); err != nil {
		return storedImage{}, fmt.Errorf("store image: update slide: %w", err)
	}
	sl.Fields += field
	sl.SparseFields += sparse
	if sl.Flagged == "" {
		sl.Flagged = rec.Flagged
	}
	if rec.Path != "" {
		if _, err := tx.ExecContext(ctx, `DELETE FROM serve_attempts WHERE path = ?`, rec.Path); err != nil {
			return storedImage{}, fmt.Errorf("store image: clear attempt: %w", err)
		}
	}
	sl.Images++
	sl.Cells += len(rec.Cells)
	sl.Infected += infected
	sl.LastImageAt = time.UnixMilli(now).UTC()
	sl.ModelVersion = rec.ModelVersion
	out := storedImage{Slide: sl}
	committed := func() {}
	if target > 0 && sl.Cells >= target {
		sum, done, err := s.completeTx(ctx, tx, sl, "target_cells", summarise)
		if err != nil {
			return storedImage{}, err
		}
		out.Completed = &sum
		out.Slide.State = "complete"
		committed = done
	}
	if err := tx.Commit(); err != nil {
		return storedImage{}, fmt.Errorf("store image: commit: %w", err)
	}
	committed()
	return out, nil
}

// addAppearance adds the cells' appearance statistics (those measured) to
// a and returns the column's new value.
func addAppearance(a *drift.SlideAppearance, cells []cellResult) (string, error) {
	for _, c := range cells {
		// Uninfected cells only, as the reference is made: parasites
		// change a cell's colour, and a heavily infected slide is not a
		// badly stained one.
		if c.Appearance != nil && !c.Parasitized {
			a.Add(inference.AppearanceNames, c.Appearance)
		}
	}
	if a.Cells == 0 {
		return "", nil
	}
	b, err := json.Marshal(a)
	if err != nil {
		return "", fmt.Errorf("slide appearance: %w", err)
	}
	return string(b), nil
}

// recordRefused counts an image of slide that was refused before it could
// be counted (implausible, unreadable): the slide's verdict weighs it. A
// refusal for a complete slide changes nothing.
func (s *dbStore) recordRefused(ctx context.Context, slide string) error {
	now := s.now().UnixMilli()
	if _, err := s.db.ExecContext(ctx, `INSERT INTO slides(slide, state, created_at, last_image_at, refused) VALUES (?, 'open', ?, ?, 1)
		ON CONFLICT(slide) DO UPDATE SET refused = refused + 1, last_image_at = excluded.last_image_at WHERE state = 'open'`, slide, now, now); err != nil {
		return fmt.Errorf("count refused image of slide %s: %w", slide, err)
	}
	return nil
}

// completeSlide summarises an open slide (marker, idle timeout, explicit
// request, shutdown never: an open slide stays open across restarts). It
// returns ok=false when the slide does not exist or is already complete.
func (s *dbStore) completeSlide(ctx context.Context, slide, reason string, summarise func(slideRow, string) (slideSummary, []feedback.Record)) (slideSummary, bool, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return slideSummary{}, false, fmt.Errorf("complete slide: %w", err)
	}
	defer tx.Rollback()
	sl, ok, err := s.getSlide(ctx, tx, slide)
	if err != nil || !ok || sl.State == "complete" {
		return slideSummary{}, false, err
	}
	sum, committed, err := s.completeTx(ctx, tx, sl, reason, summarise)
	if err != nil {
		return slideSummary{}, false, err
	}
	if err := tx.Commit(); err != nil {
		return slideSummary{}, false, fmt.Errorf("complete slide: commit: %w", err)
	}
	committed()
	return sum, true, nil
}

func (s *dbStore) completeTx(ctx context.Context, tx *sql.Tx, sl slideRow, reason string, summarise func(slideRow, string) (slideSummary, []feedback.Record)) (slideSummary, func(), error) {
	sl.CompletedAt = s.now().UTC()
	// Unique across devices (with the slide id and instance) and across a
	// wiped or reinstalled database (the instance is new then).
	sl.ResultID = fmt.Sprintf("%s-%s-%d", sl.Slide, s.instance, sl.ID)
	scores, err := s.slideScores(ctx, tx, sl.ID)
	if err != nil {
		return slideSummary{}, nil, err
	}
	sl.Scores = scores
	sum, recs := summarise(sl, reason)
	if _, err := tx.ExecContext(ctx, `UPDATE slides SET state = 'complete', completed_at = ?, stopping_reason = ?,
		parasitemia_pct = ?, ci_low_pct = ?, ci_high_pct = ?, ci_method = ?, result_id = ?, verdict = ? WHERE id = ?`,
		sl.CompletedAt.UnixMilli(), reason, sum.ParasitemiaPct, sum.CILowPct, sum.CIHighPct, sum.CIMethod, sl.ResultID, sum.Verdict, sl.ID); err != nil {
		return slideSummary{}, nil, fmt.Errorf("complete slide %s: %w", sl.Slide, err)
	}
	committed, err := s.enqueueTx(ctx, tx, recs...)
	if err != nil {
		return slideSummary{}, nil, err
	}
	if err := s.eventTx(ctx, tx, "info", "slide_complete", sl.Slide, fmt.Sprintf("%s: %d cells, %d infected", reason, sl.Cells, sl.Infected)); err != nil {
		return slideSummary{}, nil, err
	}
	return sum, committed, nil
}

// eventTx records an event with q: a transaction, or the database itself.
func (s *dbStore) eventTx(ctx context.Context, q interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, level, kind, slide, detail string) error {
	if _, err := q.ExecContext(ctx, `INSERT INTO events(at, level, kind, slide, detail) VALUES (?, ?, ?, ?, ?)`,
		s.now().UnixMilli(), level, kind, slide, detail); err != nil {
		return fmt.Errorf("record event: %w", err)
	}
	return nil
}

func (s *dbStore) event(ctx context.Context, level, kind, slide, detail string) error {
	return s.eventTx(ctx, s.db, level, kind, slide, detail)
}

// idleSlides lists open slides whose last image is older than before.
func (s *dbStore) idleSlides(ctx context.Context, before time.Time) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT slide FROM slides WHERE state = 'open' AND last_image_at < ?`, before.UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("idle slides: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var sl string
		if err := rows.Scan(&sl); err != nil {
			return nil, err
		}
		out = append(out, sl)
	}
	return out, rows.Err()
}

// hasImage reports whether slide/name was already stored.
func (s *dbStore) hasImage(ctx context.Context, slide, name string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM images i JOIN slides s ON s.id = i.slide_id WHERE s.slide = ? AND i.name = ?`, slide, name).Scan(&n)
	return n > 0, err
}

// prune applies retention: predictions, images and events older than
// cutoff, and complete slides older than cutoff whose result was sent.
func (s *dbStore) prune(ctx context.Context, cutoff time.Time) (int64, error) {
	c := cutoff.UnixMilli()
	var total int64
	for _, q := range []string{
		`DELETE FROM cell_predictions WHERE created_at < ?`,
		`DELETE FROM images WHERE created_at < ?`,
		`DELETE FROM events WHERE at < ?`,
		// A result waiting in the outbox carries its own payload, so its
		// slide's row can go on time.
		`DELETE FROM slides WHERE state = 'complete' AND completed_at < ?`,
	} {
		res, err := s.db.ExecContext(ctx, q, c)
		if err != nil {
			return total, fmt.Errorf("retention: %w", err)
		}
		n, _ := res.RowsAffected()
		total += n
	}
	return total, nil
}

// shedOldest deletes the n oldest per-cell predictions (the bulk of the
// database); slide summaries and the outbox are kept.
func (s *dbStore) shedOldest(ctx context.Context, n int) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM cell_predictions WHERE id IN (SELECT id FROM cell_predictions ORDER BY id LIMIT ?)`, n)
	if err != nil {
		return 0, fmt.Errorf("shed predictions: %w", err)
	}
	return res.RowsAffected()
}

// Drift state rows: "monitor" (the monitor's state, for one model version)
// and "calibrated" (the last recalibrated baseline, keyed by baseline and
// settings).
func (s *dbStore) driftPut(ctx context.Context, key, model string, value []byte) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO drift_state(key, model_version, value, saved_at) VALUES (?, ?, ?, ?)
		ON CONFLICT(key) DO UPDATE SET model_version = excluded.model_version, value = excluded.value, saved_at = excluded.saved_at`,
		key, model, value, s.now().UnixMilli())
	if err != nil {
		return fmt.Errorf("save drift %s: %w", key, err)
	}
	return nil
}

func (s *dbStore) driftGet(ctx context.Context, key string) ([]byte, bool, error) {
	v, _, ok, err := s.driftGetModel(ctx, key)
	return v, ok, err
}

func (s *dbStore) driftGetModel(ctx context.Context, key string) ([]byte, string, bool, error) {
	var v []byte
	var model string
	err := s.db.QueryRowContext(ctx, `SELECT value, model_version FROM drift_state WHERE key = ?`, key).Scan(&v, &model)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, "", false, nil
	}
	if err != nil {
		return nil, "", false, fmt.Errorf("read drift %s: %w", key, err)
	}
	return v, model, true, nil
}

// recordAlert writes an events row and the alert's outbox record (none
// without MQTT) in one transaction.
func (s *dbStore) recordAlert(ctx context.Context, level, kind, detail string, recs ...feedback.Record) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("record alert: %w", err)
	}
	defer tx.Rollback()
	if err := s.eventTx(ctx, tx, level, kind, "", detail); err != nil {
		return err
	}
	committed, err := s.enqueueTx(ctx, tx, recs...)
	if err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("record alert: commit: %w", err)
	}
	committed()
	return nil
}

// meta and setMeta read and write serve_meta.
func (s *dbStore) meta(ctx context.Context, key string) (string, bool, error) {
	var v string
	err := s.db.QueryRowContext(ctx, `SELECT value FROM serve_meta WHERE key = ?`, key).Scan(&v)
	if err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("read %s: %w", key, err)
	}
	return v, true, nil
}

func (s *dbStore) setMeta(ctx context.Context, key, value string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO serve_meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`, key, value)
	if err != nil {
		return fmt.Errorf("save %s: %w", key, err)
	}
	return nil
}

// beginAttempt records that the inbox file at path is about to be analysed
// and returns how many times that has been recorded, this time included.
// The count survives a crash: a file that kills the daemon is recognised
// on the next start by a count that nothing cleared.
func (s *dbStore) beginAttempt(ctx context.Context, path string) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `INSERT INTO serve_attempts(path, attempts, last_at) VALUES (?, 1, ?)
		ON CONFLICT(path) DO UPDATE SET attempts = attempts + 1, last_at = excluded.last_at RETURNING attempts`,
		path, s.now().UnixMilli()).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("record attempt: %w", err)
	}
	return n, nil
}

// endAttempt forgets path's attempts: it was handled (stored, skipped or
// quarantined).
func (s *dbStore) endAttempt(ctx context.Context, path string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM serve_attempts WHERE path = ?`, path); err != nil {
		return fmt.Errorf("clear attempt: %w", err)
	}
	return nil
}
