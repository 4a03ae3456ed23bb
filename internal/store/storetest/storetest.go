// Package storetest opens SQLite databases for tests the way the product
// does (store.Open: WAL, FULL sync, the owners' migrations) and checks them
// when the test ends: a test that leaves a corrupt database fails, even if
// everything it asserted held.
package storetest

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/scopewatch/scopewatch/internal/store"
)

// Open opens (creating) the database at path, or a fresh one in the test's
// temporary folder when path is "", with schemas applied. On cleanup it runs
// PRAGMA integrity_check and fails the test unless SQLite answers "ok",
// then closes the database.
func Open(t testing.TB, path string, schemas ...store.Schema) *sql.DB {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "test.db")
	}
	db, err := store.Open(context.Background(), path, store.Options{}, schemas...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		Check(t, db)
		db.Close()
	})
	return db
}

// OpenReadOnly opens an existing database read-only, as a second process
// (an operator's sqlite3 shell, a test watching a daemon) would, and
// closes it on cleanup.
func OpenReadOnly(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := store.OpenReadOnly(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// Check fails the test unless PRAGMA integrity_check answers "ok".
func Check(t testing.TB, db *sql.DB) {
	t.Helper()
	rows, err := db.Query(`PRAGMA integrity_check`)
	if err != nil {
		t.Errorf("integrity check: %v", err)
		return
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Errorf("integrity check: %v", err)
			return
		}
		if s != "ok" {
			problems = append(problems, s)
		}
	}
	if err := rows.Err(); err != nil {
		t.Errorf("integrity check: %v", err)
	}
	if len(problems) > 0 {
		t.Errorf("database fails its integrity check: %v", problems)
	}
}
