package tuning

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestJournalRoundTripAndResume(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.jsonl")
	j, recs, err := OpenJournal(path)
	if err != nil || len(recs) != 0 {
		t.Fatalf("new journal: %v, %d records", err, len(recs))
	}
	at := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	s, err := Load(writeStudy(t))
	if err != nil {
		t.Fatal(err)
	}
	steps := []Record{
		{Type: RecordStudy, At: at, Study: s},
		{Type: RecordAsk, At: at, Trial: 1, Seed: 11, Phase: "explore", Params: Params{"lr": 0.01, "optimizer": "adam"}},
		{Type: RecordAsk, At: at, Trial: 2, Seed: 12, Phase: "explore", Params: Params{"lr": 0.1, "optimizer": "sgd"}},
		{Type: RecordTell, At: at, Trial: 2, Outcome: &Outcome{State: StateFailed, Value: math.NaN(), Reason: "exit status 1"}},
		{Type: RecordAsk, At: at, Trial: 3, Seed: 13, Phase: "explore", Params: Params{"lr": 0.001, "optimizer": "adam"}},
		{Type: RecordTell, At: at, Trial: 1, Outcome: &Outcome{State: StateComplete, Value: 0.25, Epochs: []Epoch{{"epoch": 1, "val_loss": 0.25}}}},
	}
	for _, r := range steps {
		if err := j.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()

	// A crash in the middle of the next write leaves a torn line.
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"type":"tell","trial":3,"outc`)
	f.Close()

	j, recs, err = OpenJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if len(recs) != len(steps) {
		t.Fatalf("reopened journal has %d records, want %d", len(recs), len(steps))
	}
	if recs[0].Study == nil || recs[0].Study.Name != s.Name {
		t.Fatalf("study record lost: %+v", recs[0])
	}
	trials, err := Replay(recs)
	if err != nil {
		t.Fatal(err)
	}
	if len(trials) != 3 {
		t.Fatalf("%d trials", len(trials))
	}
	if o := trials[0].Outcome; o == nil || o.State != StateComplete || o.Value != 0.25 || o.Epochs[0]["val_loss"] != 0.25 {
		t.Fatalf("trial 1: %+v", o)
	}
	if o := trials[1].Outcome; o == nil || o.State != StateFailed || !math.IsNaN(o.Value) {
		t.Fatalf("failed trial 2 not kept as failed: %+v", o)
	}
	if trials[2].Outcome != nil || trials[2].Ask.Seed != 13 || trials[2].Ask.Params["optimizer"] != "adam" {
		t.Fatalf("interrupted trial 3 should be pending with its seed and params: %+v", trials[2])
	}

	// The torn tail was cut: the next record starts on a line of its own.
	if err := j.Append(Record{Type: RecordTell, Trial: 3, Outcome: &Outcome{State: StateComplete, Value: 0.5}}); err != nil {
		t.Fatal(err)
	}
	recs, err = ReadJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	if trials, err = Replay(recs); err != nil || trials[2].Outcome == nil {
		t.Fatalf("after resume: %v %+v", err, trials)
	}
}

func TestJournalRefusesDamage(t *testing.T) {
	cases := map[string]string{
		"garbage in the middle": "{\"type\":\"ask\",\"trial\":1}\nnot json\n{\"type\":\"ask\",\"trial\":2}\n",
		"record without type":   "{\"trial\":1}\n",
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "journal.jsonl")
			os.WriteFile(path, []byte(body), 0o644)
			if _, _, err := OpenJournal(path); !errors.Is(err, ErrCorruptJournal) {
				t.Fatalf("OpenJournal: %v", err)
			}
		})
	}
}

func TestReplayRefusesDoubleCounting(t *testing.T) {
	ask := Record{Type: RecordAsk, Trial: 1}
	tell := Record{Type: RecordTell, Trial: 1, Outcome: &Outcome{State: StateComplete, Value: 1}}
	cases := map[string][]Record{
		"two tells":       {ask, tell, tell},
		"two asks":        {ask, ask},
		"tell before ask": {tell},
		"unknown type":    {{Type: "vote"}},
	}
	for name, recs := range cases {
		if _, err := Replay(recs); !errors.Is(err, ErrCorruptJournal) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func writeStudy(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "study.yaml")
	if err := os.WriteFile(path, []byte(exampleStudy), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
