package retune

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/synth"
	"github.com/scopewatch/scopewatch/tuning"
)

// The tests run the real pipeline: the shipped default bundle in ONNX
// Runtime, synthetic crops of unseen slides (generator seeds >= 100000 are
// never trained on), a small study and a quick calibration.

const quickStudy = `name: retune-test
objective: {builtin: head, metric: val_loss, direction: minimize}
parameters:
  - {name: lr, role: nuisance, type: float, min: 1e-3, max: 3e-2, log: true}
  - {name: dropout, role: fixed, value: 0.2}
  - {name: patience, role: fixed, value: 3}
  - {name: batch_size, role: fixed, value: 64}
budget: {trials: 4, explore: 3, parallel: 2, max_epochs: 12}
pruning: {method: none}
replicates: {finalists: 1, seeds: 2}
seed: 3
`

type fixture struct {
	bundle *inference.Bundle
	clf    *inference.Classifier
	key    ed25519.PrivateKey
	pub    ed25519.PublicKey
	study  *tuning.Study
}

var (
	fixOnce sync.Once
	fix     fixture
	fixErr  error
	dataMu  sync.Mutex
	dataDir = map[string]string{}
)

func setup(t *testing.T) fixture {
	t.Helper()
	fixOnce.Do(func() {
		root, _ := filepath.Abs(filepath.Join("..", ".."))
		keys, err := inference.LoadPublicKeys(filepath.Join(root, "models", "keys"))
		if err != nil {
			fixErr = err
			return
		}
		b, err := inference.OpenBundle(filepath.Join(root, "models", "default"), inference.BundleOptions{TrustedKeys: keys})
		if err != nil {
			fixErr = err
			return
		}
		clf, err := inference.NewClassifier(b, inference.ClassifierOptions{})
		if err != nil {
			fixErr = err
			return
		}
		pub, priv, err := inference.GenerateKey(nil)
		if err != nil {
			fixErr = err
			return
		}
		s, err := tuning.Decode(strings.NewReader(quickStudy))
		if err != nil {
			fixErr = err
			return
		}
		fix = fixture{bundle: b, clf: clf, key: priv, pub: pub, study: s}
	})
	if fixErr != nil {
		t.Fatalf("fixture: %v", fixErr)
	}
	return fix
}

// cells writes (once per test binary) n synthetic crops of seed with the
// stain shifted by shift degrees, 25 per slide, and returns the folder.
func cells(t *testing.T, seed int64, n int, shift float64) string {
	t.Helper()
	dataMu.Lock()
	defer dataMu.Unlock()
	k := filepath.Join(dataRoot, fmt.Sprintf("%d-%d-%g", seed, n, shift))
	if d, ok := dataDir[k]; ok {
		return d
	}
	os.RemoveAll(k)
	if _, err := synth.WriteCells(context.Background(), synth.CellsConfig{Dir: k, N: n, Seed: seed, CellsPerSlide: 25, Knobs: synth.Knobs{StainShift: shift}}); err != nil {
		t.Fatal(err)
	}
	dataDir[k] = k
	return k
}

// dataRoot holds the crops the tests share, made once per test binary.
var dataRoot string

func TestMain(m *testing.M) {
	var err error
	if dataRoot, err = os.MkdirTemp("", "scopewatch-retune-test-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dataRoot)
	os.Exit(code)
}

type testRun struct {
	cfg  Config
	logs *bytes.Buffer
}

func newRun(t *testing.T, f fixture, nominal, feedback []string, ledger string) *testRun {
	var logs bytes.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("retune log:\n%s", logs.String())
		}
	})
	if ledger == "" {
		ledger = filepath.Join(t.TempDir(), "sealed.jsonl")
	}
	return &testRun{logs: &logs, cfg: Config{
		Incumbent: f.bundle, Scorer: f.clf, Nominal: nominal, Feedback: feedback,
		Out: filepath.Join(t.TempDir(), "out"), Key: f.key, Ledger: tuning.OpenLedger(ledger),
		Study: f.study, Snapshot: tuning.SnapshotOptions{MinSamples: 100}, BaselineSims: 100, BootstrapReps: 400,
		Log: slog.New(slog.NewTextHandler(&logs, nil)),
	}}
}

// TestRetuneAcceptsAShiftedDomain: labelled crops of a 60° stain shift and
// nominal crops give a bundle that is better on the shifted test slides,
// verifies as a device would, is newer than the incumbent, and carries its
// card, baseline and the study's report and plots.
func TestRetuneAcceptsAShiftedDomain(t *testing.T) {
	f := setup(t)
	nominal, shifted := cells(t, 100501, 500, 0), cells(t, 100502, 500, 60)
	r := newRun(t, f, []string{nominal}, []string{shifted}, "")
	dec, err := Run(context.Background(), r.cfg)
	if err != nil {
		t.Fatalf("retune: %v", err)
	}
	if !dec.Accepted || dec.Bundle == "" {
		t.Fatalf("decision %+v", dec)
	}
	fb := dec.PerDomain[DomainFeedback]
	if !(fb.AccuracyDiff.Value > 0) || !(dec.Test.AccuracyDiff.Lo > 0) {
		t.Fatalf("feedback accuracy %+v vs incumbent %+v", fb.New.Accuracy, fb.Incumbent.Accuracy)
	}
	b, err := inference.OpenBundle(dec.Bundle, inference.BundleOptions{TrustedKeys: []ed25519.PublicKey{f.pub}})
	if err != nil {
		t.Fatalf("new bundle: %v", err)
	}
	defer b.Close()
	if o, err := inference.CompareVersions(b.Manifest.Version, f.bundle.Manifest.Version); err != nil || o != 1 {
		t.Fatalf("version %s vs incumbent %s: %d %v", b.Manifest.Version, f.bundle.Manifest.Version, o, err)
	}
	if b.Manifest.Threshold != dec.Threshold || b.Manifest.Files[inference.BackboneFile] != f.bundle.Manifest.Files[inference.BackboneFile] {
		t.Fatalf("manifest threshold %v (decision %v), backbone %s", b.Manifest.Threshold, dec.Threshold, b.Manifest.Files[inference.BackboneFile])
	}
	card, err := b.ReadFile("MODEL_CARD.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{dec.Snapshot, "head only", "Sealed test", "Domain feedback", "Domain nominal", f.bundle.Manifest.Version} {
		if !bytes.Contains(card, []byte(want)) {
			t.Errorf("card lacks %q", want)
		}
	}
	if _, err := b.ReadFile("baseline.json"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"study/report.html", "study/journal.jsonl", "study/plots/incumbent-vs-new.png", "study/plots/incumbent-vs-new.svg", "study/plots/curves.png", DecisionFile} {
		if _, err := os.Stat(filepath.Join(r.cfg.Out, p)); err != nil {
			t.Errorf("output: %v", err)
		}
	}
	// The new model scores the test crops the way the decision says: its
	// own classifier, in ONNX Runtime, agrees with the retune's figures.
	checkTestAccuracy(t, b, testSamples(t, r.cfg.Out), dec)
}

// TestSealedTestEvaluatedOnce: a second retune of the same snapshot, into
// another folder, is refused before it trains, and writes no bundle.
func TestSealedTestEvaluatedOnce(t *testing.T) {
	f := setup(t)
	nominal, shifted := cells(t, 100501, 500, 0), cells(t, 100502, 500, 60)
	ledger := filepath.Join(t.TempDir(), "sealed.jsonl")
	first := newRun(t, f, []string{nominal}, []string{shifted}, ledger)
	if _, err := Run(context.Background(), first.cfg); err != nil {
		t.Fatalf("first retune: %v", err)
	}
	second := newRun(t, f, []string{nominal}, []string{shifted}, ledger)
	dec, err := Run(context.Background(), second.cfg)
	if !errors.Is(err, ErrRefused) || !errors.Is(err, tuning.ErrSealedTestUsed) {
		t.Fatalf("second retune: %v, want a refusal for a used sealed test", err)
	}
	if dec == nil || dec.Accepted || dec.Study != nil {
		t.Fatalf("second retune trained or accepted: %+v", dec)
	}
	if _, err := os.Stat(filepath.Join(second.cfg.Out, BundleDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("second retune wrote a bundle: %v", err)
	}
}

// TestRetuneResumes: a retune cancelled during its study, run again on
// the same folder, finishes with the very model an uninterrupted run
// makes.
func TestRetuneResumes(t *testing.T) {
	f := setup(t)
	nominal, shifted := cells(t, 100501, 500, 0), cells(t, 100502, 500, 60)
	whole := newRun(t, f, []string{nominal}, []string{shifted}, "")
	want, err := Run(context.Background(), whole.cfg)
	if err != nil {
		t.Fatal(err)
	}

	ledger := filepath.Join(t.TempDir(), "sealed.jsonl")
	cut := newRun(t, f, []string{nominal}, []string{shifted}, ledger)
	ctx, cancel := context.WithCancel(context.Background())
	cut.cfg.Log = slog.New(cancelAfter{h: slog.NewTextHandler(cut.logs, nil), msg: "trial finished", n: new(int), cancel: cancel})
	if _, err := Run(ctx, cut.cfg); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled retune: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cut.cfg.Out, BundleDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a cancelled retune left a bundle")
	}
	again := newRun(t, f, []string{nominal}, []string{shifted}, ledger)
	again.cfg.Out = cut.cfg.Out
	got, err := Run(context.Background(), again.cfg)
	if err != nil {
		t.Fatalf("resumed retune: %v", err)
	}
	if got.ModelID != want.ModelID || got.Threshold != want.Threshold || got.Study.Winner != want.Study.Winner {
		t.Fatalf("resumed model %s (trial %d, threshold %v), uninterrupted %s (trial %d, threshold %v)",
			got.ModelID, got.Study.Winner, got.Threshold, want.ModelID, want.Study.Winner, want.Threshold)
	}
	if !strings.Contains(again.logs.String(), "retune features reused") {
		t.Error("the resumed retune classified the snapshot again")
	}
}

// cancelAfter cancels the run at the second log record with msg.
type cancelAfter struct {
	h      slog.Handler
	msg    string
	n      *int
	cancel context.CancelFunc
}

func (c cancelAfter) Enabled(ctx context.Context, l slog.Level) bool { return c.h.Enabled(ctx, l) }
func (c cancelAfter) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == c.msg {
		*c.n++
		if *c.n == 2 {
			c.cancel()
		}
	}
	return c.h.Handle(ctx, r)
}
func (c cancelAfter) WithAttrs(a []slog.Attr) slog.Handler {
	return cancelAfter{h: c.h.WithAttrs(a), msg: c.msg, n: c.n, cancel: c.cancel}
}
func (c cancelAfter) WithGroup(g string) slog.Handler {
	return cancelAfter{h: c.h.WithGroup(g), msg: c.msg, n: c.n, cancel: c.cancel}
}

// TestRetuneRefusals: each reason to refuse, with nothing published.
func TestRetuneRefusals(t *testing.T) {
	f := setup(t)
	nominal, shifted := cells(t, 100501, 500, 0), cells(t, 100502, 500, 60)
	oneSlide := cells(t, 100503, 25, 60)
	fewCells := cells(t, 100504, 75, 60)
	nominal2 := cells(t, 100505, 500, 0)
	oneClass := filepath.Join(t.TempDir(), "one-class")
	copyLabelled(t, shifted, oneClass, func(label string) bool { return label == "uninfected" })
	for _, c := range []struct {
		name              string
		nominal, feedback []string
		mutate            func(*Config)
		want              string
	}{
		{"too few labels", nil, []string{fewCells}, nil, "floor is 100"},
		{"single slide", nil, []string{oneSlide}, func(c *Config) { c.Snapshot.MinSamples = 10 }, "1 slide(s)"},
		{"one class", nil, []string{oneClass}, nil, "no image of class"},
		{"not better", []string{nominal}, []string{nominal2}, nil, "not better than the incumbent"},
		{"inputs changed", []string{nominal}, []string{shifted}, func(c *Config) {
			victim := filepath.Join(t.TempDir(), "moving")
			copyLabelled(t, shifted, victim, func(string) bool { return true })
			c.Feedback = []string{victim}
			c.Scorer = touchAfter{Scorer: c.Scorer, path: firstImage(t, victim)}
		}, "the inputs changed during the run"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRun(t, f, c.nominal, c.feedback, "")
			if c.mutate != nil {
				c.mutate(&r.cfg)
			}
			dec, err := Run(context.Background(), r.cfg)
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want a refusal saying %q", err, c.want)
			}
			if dec == nil || dec.Accepted || len(dec.Reasons) == 0 {
				t.Fatalf("decision %+v", dec)
			}
			if _, err := os.Stat(filepath.Join(r.cfg.Out, BundleDir)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a refused retune wrote a bundle (%v)", err)
			}
		})
	}
}

// touchAfter rewrites one input image after the features are computed,
// as a folder that changes during a long study would.
type touchAfter struct {
	Scorer
	path string
}

func (s touchAfter) Stream(ctx context.Context, n int, in func(int) inference.Input, out func(inference.Result)) error {
	if err := s.Scorer.Stream(ctx, n, in, out); err != nil {
		return err
	}
	data, err := os.ReadFile(s.path)
	if err != nil {
		return err
	}
	return os.WriteFile(s.path, append(data, 0), 0o644)
}

func firstImage(t *testing.T, dir string) string {
	raw, err := os.ReadFile(filepath.Join(dir, "labels.csv"))
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Split(string(raw), "\n")[1]
	return filepath.Join(dir, strings.Split(line, ",")[0])
}

// copyLabelled copies the rows of src's labels.csv that keep accepts.
func copyLabelled(t *testing.T, src, dst string, keep func(label string) bool) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(src, "labels.csv"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	out := []string{lines[0]}
	for _, l := range lines[1:] {
		fs := strings.Split(l, ",")
		if !keep(fs[1]) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(src, fs[0]))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dst, fs[0])
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		out = append(out, l)
	}
	if err := os.WriteFile(filepath.Join(dst, "labels.csv"), []byte(strings.Join(out, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}
