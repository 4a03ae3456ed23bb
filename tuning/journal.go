package tuning

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Journal record types.
const (
	RecordStudy = "study" // first record: the study as run
	RecordAsk   = "ask"   // a trial's parameters and seed, before it runs
	RecordTell  = "tell"  // a trial's outcome
)

// Record is one line of a study's journal.
type Record struct {
	Type  string    `json:"type"`
	At    time.Time `json:"at"`
	Trial int       `json:"trial,omitempty"`
	Seed  int64     `json:"seed,omitempty"`
	// Phase is explore, exploit or replicate for an ask.
	Phase string `json:"phase,omitempty"`
	// Of is, for a replicate, the search trial whose parameters it reruns
	// with another seed. Replicates are numbered after the search budget.
	Of      int      `json:"of,omitempty"`
	Params  Params   `json:"params,omitempty"`
	Outcome *Outcome `json:"outcome,omitempty"`
	Study   *Study   `json:"study,omitempty"`
}

// ErrCorruptJournal is returned when a journal has a damaged record other
// than a torn last line.
var ErrCorruptJournal = errors.New("corrupt journal")

// Journal is a study's append-only record of every ask and tell, one JSON
// line each, fsynced before Append returns: what the journal holds survives
// SIGKILL and power loss, and a study resumes from it.
type Journal struct {
	f *os.File
}

// OpenJournal opens (creating) the journal at path and returns it with the
// records already in it. A torn last line, which a crash in the middle of a
// write leaves behind, is cut off; damage anywhere else is ErrCorruptJournal,
// because a resumed study must not silently lose a trial.
func OpenJournal(path string) (*Journal, []Record, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("journal: %w", err)
	}
	recs, good, err := readRecords(f)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("journal %s: %w", path, err)
	}
	if err := f.Truncate(good); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("journal %s: cut torn tail: %w", path, err)
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("journal %s: %w", path, err)
	}
	return &Journal{f: f}, recs, nil
}

// ReadJournal reads the records of a journal without opening it for writing
// (for reports); a torn last line is ignored.
func ReadJournal(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	defer f.Close()
	recs, _, err := readRecords(f)
	if err != nil {
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	return recs, nil
}

// readRecords returns the records and the offset after the last complete
// one.
func readRecords(r io.Reader) ([]Record, int64, error) {
	br := bufio.NewReader(r)
	var (
		recs []Record
		off  int64
		line int
	)
	for {
		b, err := br.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			// No newline: a torn write (or nothing). It is dropped, and so is
			// the trial it would have recorded, which then reruns.
			return recs, off, nil
		}
		if err != nil {
			return nil, 0, err
		}
		line++
		var rec Record
		if err := json.Unmarshal(bytes.TrimSpace(b), &rec); err != nil || rec.Type == "" {
			return nil, 0, fmt.Errorf("%w: line %d is not a journal record", ErrCorruptJournal, line)
		}
		recs = append(recs, rec)
		off += int64(len(b))
	}
}

// Append writes one record and syncs it to disk.
func (j *Journal) Append(rec Record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("journal: encode %s record: %w", rec.Type, err)
	}
	b = append(b, '\n')
	if _, err := j.f.Write(b); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("journal: sync: %w", err)
	}
	return nil
}

// Close closes the journal file.
func (j *Journal) Close() error { return j.f.Close() }

// TrialState is one trial as the journal tells it.
type TrialState struct {
	Ask     Record
	Outcome *Outcome // nil while the trial has not finished
}

// Replay folds records into trials by number, in trial order. A trial asked
// but never told was interrupted; a resumed study reruns it with the same
// parameters and seed. A second tell for a trial, or a tell without an ask,
// is ErrCorruptJournal: counting a trial twice would bias the study.
func Replay(recs []Record) ([]TrialState, error) {
	byTrial := map[int]int{}
	var out []TrialState
	for i, r := range recs {
		switch r.Type {
		case RecordStudy:
		case RecordAsk:
			if _, dup := byTrial[r.Trial]; dup {
				return nil, fmt.Errorf("%w: record %d asks trial %d again", ErrCorruptJournal, i+1, r.Trial)
			}
			byTrial[r.Trial] = len(out)
			out = append(out, TrialState{Ask: r})
		case RecordTell:
			k, ok := byTrial[r.Trial]
			if !ok || r.Outcome == nil {
				return nil, fmt.Errorf("%w: record %d tells trial %d, which was never asked", ErrCorruptJournal, i+1, r.Trial)
			}
			if out[k].Outcome != nil {
				return nil, fmt.Errorf("%w: record %d tells trial %d a second time", ErrCorruptJournal, i+1, r.Trial)
			}
			o := *r.Outcome
			out[k].Outcome = &o
		default:
			return nil, fmt.Errorf("%w: record %d has unknown type %q", ErrCorruptJournal, i+1, r.Type)
		}
	}
	return out, nil
}
