// Package store owns how scopewatch opens its SQLite databases: the
// connection settings every process uses (WAL, synchronous=FULL, busy
// timeout, foreign keys, a single writer connection), the versioned
// migrations that the packages owning tables register, and the health and
// size helpers used for disk bounding.
//
// Tables belong to the package that writes them. Each owner describes its
// schema as a Schema (an owner name and an ordered list of migrations); the
// process passes every Schema it needs to Open, which applies whatever is
// missing in one transaction. Applied steps are recorded per owner in
// schema_migrations(owner, version), and PRAGMA user_version is set to the
// total number of applied steps so that `sqlite3 db 'PRAGMA user_version'`
// shows at a glance whether two databases carry the same schema.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	sqlite3 "github.com/mattn/go-sqlite3"
)

// Sentinel errors callers branch on.
var (
	// ErrSchemaTooNew means the database was written by a newer binary: it
	// records more migrations for an owner than this binary knows.
	ErrSchemaTooNew = errors.New("database schema is newer than this program")
	// ErrCorrupt means PRAGMA integrity_check reported problems.
	ErrCorrupt = errors.New("database integrity check failed")
	// ErrBadSchema means a Schema passed to Open is malformed.
	ErrBadSchema = errors.New("invalid schema definition")
)

// Migration is one forward step of an owner's schema. Exactly one of SQL
// and Func is set. Steps are never edited once released: a change is a new
// step appended to the list.
type Migration struct {
	// SQL is executed with Exec; it may hold several statements.
	SQL string
	// Func runs arbitrary Go in the migration transaction.
	Func func(ctx context.Context, tx *sql.Tx) error
}

// Schema is the ordered list of migrations of one table owner. Version n of
// the owner means Migrations[0..n-1] have been applied.
type Schema struct {
	Owner      string
	Migrations []Migration
}

// Options tune Open. The zero value is the production setting.
type Options struct {
	// BusyTimeout is how long a statement waits for a lock held by another
	// connection or process; default 10 s.
	BusyTimeout time.Duration
	// Synchronous is the PRAGMA synchronous level; default "FULL" so that
	// a committed transaction survives power loss (the outbox relies on it).
	Synchronous string
}

// Open opens (creating if needed) the database at path with the project's
// settings and applies the given schemas.
//
// The returned pool holds at most one connection: SQLite allows one writer
// at a time, and funnelling every statement through one connection turns
// lock contention inside the process into plain queueing instead of
// SQLITE_BUSY errors. The consequence callers must respect: never run a
// query while iterating the rows of another query on the same *sql.DB, and
// keep transactions short (close Rows before issuing the next statement).
// Readers that must not queue behind writers can use OpenReadOnly.
func Open(ctx context.Context, path string, opts Options, schemas ...Schema) (*sql.DB, error) {
	if path == "" {
		return nil, fmt.Errorf("open database: empty path")
	}
	db, err := sql.Open("sqlite3", dsn(path, opts, false))
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	if path != ":memory:" && !strings.EqualFold(mode, "wal") {
		db.Close()
		return nil, fmt.Errorf("open database %s: journal_mode is %q, want wal (is the file on a filesystem without shared memory?)", path, mode)
	}
	if err := Migrate(ctx, db, schemas...); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	return db, nil
}

// OpenReadOnly opens an existing database for concurrent reads (WAL lets
// them proceed while the writer commits). It applies no migrations.
func OpenReadOnly(path string, opts Options) (*sql.DB, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("open database read-only: %w", err)
	}
	db, err := sql.Open("sqlite3", dsn(path, opts, true))
	if err != nil {
		return nil, fmt.Errorf("open database read-only %s: %w", path, err)
	}
	return db, nil
}

func dsn(path string, opts Options, readOnly bool) string {
	busy := opts.BusyTimeout
	if busy <= 0 {
		busy = 10 * time.Second
	}
	syncMode := opts.Synchronous
	if syncMode == "" {
		syncMode = "FULL"
	}
	q := url.Values{}
	q.Set("_busy_timeout", fmt.Sprint(busy.Milliseconds()))
	q.Set("_foreign_keys", "on")
	if readOnly {
		q.Set("mode", "ro")
	} else {
		q.Set("_journal_mode", "WAL")
		q.Set("_synchronous", syncMode)
		// BEGIN IMMEDIATE takes the write lock up front, so a transaction
		// never fails half-way when upgrading from a read lock.
		q.Set("_txlock", "immediate")
	}
	if path == ":memory:" {
		return "file::memory:?" + q.Encode()
	}
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

const migrationsTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
	owner      TEXT NOT NULL,
	version    INTEGER NOT NULL,
	applied_at TEXT NOT NULL,
	PRIMARY KEY (owner, version)
)`

// Migrate applies the missing steps of every schema in one transaction:
// either the database ends at the new versions of all owners or nothing
// changed. Owners are applied in the order given. Owners present in the
// database but not passed here are left alone.
func Migrate(ctx context.Context, db *sql.DB, schemas ...Schema) error {
	seen := map[string]bool{}
	for _, s := range schemas {
		if s.Owner == "" {
			return fmt.Errorf("migrate: %w: empty owner", ErrBadSchema)
		}
		if seen[s.Owner] {
			return fmt.Errorf("migrate: %w: owner %q given twice", ErrBadSchema, s.Owner)
		}
		seen[s.Owner] = true
		for i, m := range s.Migrations {
			if (m.SQL == "") == (m.Func == nil) {
				return fmt.Errorf("migrate: %w: owner %q step %d must set exactly one of SQL and Func", ErrBadSchema, s.Owner, i+1)
			}
		}
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: begin: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, migrationsTable); err != nil {
		return fmt.Errorf("migrate: create schema_migrations: %w", err)
	}
	current, err := versions(ctx, tx)
	if err != nil {
		return err
	}
	now := time.Now().UTC().Format(time.RFC3339)
	for _, s := range schemas {
		have := current[s.Owner]
		if have > len(s.Migrations) {
			return fmt.Errorf("migrate: owner %q is at version %d but this program knows %d steps: %w", s.Owner, have, len(s.Migrations), ErrSchemaTooNew)
		}
		for v := have + 1; v <= len(s.Migrations); v++ {
			m := s.Migrations[v-1]
			if m.SQL != "" {
				_, err = tx.ExecContext(ctx, m.SQL)
			} else {
				err = m.Func(ctx, tx)
			}
			if err != nil {
				return fmt.Errorf("migrate: owner %q step %d: %w", s.Owner, v, err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations(owner, version, applied_at) VALUES (?, ?, ?)`, s.Owner, v, now); err != nil {
				return fmt.Errorf("migrate: record owner %q step %d: %w", s.Owner, v, err)
			}
		}
	}
	var total int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations`).Scan(&total); err != nil {
		return fmt.Errorf("migrate: count: %w", err)
	}
	// PRAGMA does not take bound parameters; total is an int we computed.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", total)); err != nil {
		return fmt.Errorf("migrate: set user_version: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	return nil
}

func versions(ctx context.Context, tx *sql.Tx) (map[string]int, error) {
	rows, err := tx.QueryContext(ctx, `SELECT owner, MAX(version) FROM schema_migrations GROUP BY owner`)
	if err != nil {
		return nil, fmt.Errorf("migrate: read versions: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var o string
		var v int
		if err := rows.Scan(&o, &v); err != nil {
			return nil, fmt.Errorf("migrate: read versions: %w", err)
		}
		out[o] = v
	}
	return out, rows.Err()
}

// Versions reports the applied version of every owner recorded in db.
func Versions(ctx context.Context, db *sql.DB) (map[string]int, error) {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("read versions: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, migrationsTable); err != nil {
		return nil, fmt.Errorf("read versions: %w", err)
	}
	return versions(ctx, tx)
}

// IntegrityCheck runs PRAGMA integrity_check and returns nil when SQLite
// answers "ok", or an error wrapping ErrCorrupt listing what it found.
func IntegrityCheck(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, "PRAGMA integrity_check")
	if err != nil {
		return fmt.Errorf("integrity check: %w", corruptErr(err))
	}
	defer rows.Close()
	var msgs []string
	for rows.Next() {
		var m string
		if err := rows.Scan(&m); err != nil {
			return fmt.Errorf("integrity check: %w", corruptErr(err))
		}
		msgs = append(msgs, m)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("integrity check: %w", corruptErr(err))
	}
	if len(msgs) == 1 && msgs[0] == "ok" {
		return nil
	}
	sort.Strings(msgs)
	return fmt.Errorf("%w: %s", ErrCorrupt, strings.Join(msgs, "; "))
}

// Size describes how much disk a database uses.
type Size struct {
	PageSize  int64
	PageCount int64
	FreePages int64
	// FileBytes is PageCount*PageSize: the main file, which never shrinks
	// without VACUUM.
	FileBytes int64
	// UsedBytes excludes the free list: what the rows occupy. Caps and
	// retention rules compare against this.
	UsedBytes int64
}

// Measure reads the page counters of db. The WAL file is not included: it
// is bounded by checkpoints (see Checkpoint).
func Measure(ctx context.Context, db *sql.DB) (Size, error) {
	var s Size
	for _, p := range []struct {
		pragma string
		dst    *int64
	}{{"page_size", &s.PageSize}, {"page_count", &s.PageCount}, {"freelist_count", &s.FreePages}} {
		if err := db.QueryRowContext(ctx, "PRAGMA "+p.pragma).Scan(p.dst); err != nil {
			return Size{}, fmt.Errorf("measure database: %s: %w", p.pragma, err)
		}
	}
	s.FileBytes = s.PageCount * s.PageSize
	s.UsedBytes = (s.PageCount - s.FreePages) * s.PageSize
	return s, nil
}

// Checkpoint copies the WAL into the main file and truncates the WAL, so the
// -wal file does not grow without bound on a busy device.
func Checkpoint(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// corruptErr marks SQLite's own "malformed"/"not a database" errors as
// ErrCorrupt: a damaged file can make the check itself fail.
func corruptErr(err error) error {
	var se sqlite3.Error
	if errors.As(err, &se) && (se.Code == sqlite3.ErrCorrupt || se.Code == sqlite3.ErrNotADB) {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return err
}

// IsFull reports whether err is SQLite's "database or disk is full"
// (SQLITE_FULL: the disk, or max_page_count, stopped the database from
// growing), so callers can tell it from other failures without importing
// the driver.
func IsFull(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && se.Code == sqlite3.ErrFull
}
