package tuning

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// The test split of a snapshot is sealed: it is evaluated once, by the
// model the study chose, after everything else is decided. A test set that
// is looked at again (to try another model, another threshold) becomes a
// second validation set, and its figures stop meaning what a model card
// says they mean. The ledger is the memory of that rule: an append-only
// JSON-lines file with one entry per evaluation, shared by every retune
// that can see it.

// ErrSealedTestUsed is returned when a snapshot's test split was already
// evaluated for another model.
var ErrSealedTestUsed = errors.New("sealed test already evaluated")

// SealedEntry is one evaluation of a snapshot's test split.
type SealedEntry struct {
	Snapshot string    `json:"snapshot"`
	Model    string    `json:"model"` // the evaluated model's identity (hash of its trained files)
	Version  string    `json:"version"`
	Out      string    `json:"out"`
	At       time.Time `json:"at"`
}

// Ledger is the file of sealed-test evaluations.
type Ledger struct{ path string }

// OpenLedger returns the ledger at path; the file and its folder are made
// on the first Seal.
func OpenLedger(path string) *Ledger { return &Ledger{path: path} }

// Path is the ledger's file.
func (l *Ledger) Path() string { return l.path }

// Check returns ErrSealedTestUsed if snapshot was evaluated for a model
// other than model. The same model again is allowed: a resumed retune
// that trains the identical head learns nothing new from its test.
func (l *Ledger) Check(snapshot, model string) error {
	es, err := l.entries()
	if err != nil {
		return err
	}
	for _, e := range es {
		if e.Snapshot == snapshot && e.Model != model {
			return fmt.Errorf("%w: snapshot %s was evaluated on %s for model %s (version %s, %s); add new labelled data for a new snapshot (ledger %s)",
				ErrSealedTestUsed, short(snapshot), e.At.Format(time.RFC3339), short(e.Model), e.Version, e.Out, l.path)
		}
	}
	return nil
}

// Evaluated returns the first evaluation of snapshot, nil when there is
// none.
func (l *Ledger) Evaluated(snapshot string) (*SealedEntry, error) {
	es, err := l.entries()
	if err != nil {
		return nil, err
	}
	for _, e := range es {
		if e.Snapshot == snapshot {
			return &e, nil
		}
	}
	return nil, nil
}

// Seal records an evaluation before it happens (so a crash after it still
// counts), under an exclusive lock so that two retunes of one snapshot
// cannot both pass Check. It fails as Check does.
func (l *Ledger) Seal(e SealedEntry) error {
	if err := os.MkdirAll(filepath.Dir(l.path), 0o755); err != nil {
		return fmt.Errorf("sealed-test ledger: %w", err)
	}
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("sealed-test ledger: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("sealed-test ledger %s: lock: %w", l.path, err)
	}
	if err := l.Check(e.Snapshot, e.Model); err != nil {
		return err
	}
	line, err := json.Marshal(e)
	if err != nil {
		return err
	}
	// A torn last line is a Seal that never returned, so no evaluation
	// followed it: it is cut off before the new entry is appended.
	raw, err := os.ReadFile(l.path)
	if err != nil {
		return fmt.Errorf("sealed-test ledger: %w", err)
	}
	end := int64(bytes.LastIndexByte(raw, '\n') + 1)
	if err := f.Truncate(end); err != nil {
		return fmt.Errorf("sealed-test ledger %s: %w", l.path, err)
	}
	if _, err := f.WriteAt(append(line, '\n'), end); err != nil {
		return fmt.Errorf("sealed-test ledger %s: %w", l.path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sealed-test ledger %s: %w", l.path, err)
	}
	return nil
}

func (l *Ledger) entries() ([]SealedEntry, error) {
	f, err := os.Open(l.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sealed-test ledger: %w", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("sealed-test ledger %s: %w", l.path, err)
	}
	// Only complete lines count: a torn tail is a Seal that never
	// returned (see Seal).
	raw = raw[:bytes.LastIndexByte(raw, '\n')+1]
	var out []SealedEntry
	for i, line := range bytes.Split(bytes.TrimSuffix(raw, []byte("\n")), []byte("\n")) {
		if len(raw) == 0 {
			break
		}
		var e SealedEntry
		if err := json.Unmarshal(line, &e); err != nil || e.Snapshot == "" || e.Model == "" {
			// A damaged ledger must stop retunes, not be read as empty:
			// that would unseal every test it recorded.
			return nil, fmt.Errorf("sealed-test ledger %s line %d: not an entry (%v); repair the file by hand", l.path, i+1, err)
		}
		out = append(out, e)
	}
	return out, nil
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
