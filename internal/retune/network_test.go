package retune

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/scopewatch/scopewatch/drift"
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/tuning"
	"gopkg.in/yaml.v3"
)

// The network study's trainer is models/recipe/finetune.py on Debian's
// torch (the README's set-up installs it). The test study is the default
// network study cut to one search trial and two replicates of two epochs:
// the path is the default's, only shorter.
const testPython = "/usr/bin/python3"

func networkTestStudy(t *testing.T) *tuning.Study {
	t.Helper()
	s := StudyNamed(StudyNetwork)
	s.Name = "retune-network-test"
	s.Budget.Trials, s.Budget.Explore, s.Budget.MaxEpochs = 1, 1, 2
	s.Replicates = tuning.Replicates{Finalists: 1, Seeds: 2}
	// Through the decoder, as a study file would be: it validates.
	raw, err := yaml.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if s, err = tuning.Decode(bytes.NewReader(raw)); err != nil {
		t.Fatal(err)
	}
	return s
}

func recipeDir(t *testing.T) string {
	t.Helper()
	out, err := exec.Command(testPython, "-c", "import torch, torchvision, onnx").CombinedOutput()
	if err != nil {
		t.Fatalf("the network study needs %s with torch, torchvision and onnx (Debian's python3-torch, python3-torchvision, python3-onnx; ./.ci/setup.sh installs them): %v\n%s", testPython, err, out)
	}
	d, _ := filepath.Abs(filepath.Join("..", "..", "models", "recipe"))
	return d
}

// TestRetuneFineTunesTheNetwork: the network study fine-tunes the
// incumbent's backbone and head through the trial protocol; the shipped
// bundle holds the replicate's exported network, and its own classifier in
// ONNX Runtime reproduces the sealed test's figures exactly.
func TestRetuneFineTunesTheNetwork(t *testing.T) {
	f := setup(t)
	nominal, shifted := cells(t, 100501, 500, 0), cells(t, 100502, 500, 60)
	r := newRun(t, f, []string{nominal}, []string{shifted}, "")
	r.cfg.Study, r.cfg.Recipe, r.cfg.Python = networkTestStudy(t), recipeDir(t), testPython
	dec, err := Run(context.Background(), r.cfg)
	if err != nil {
		t.Fatalf("retune: %v", err)
	}
	if !dec.Accepted || dec.Study == nil || !strings.Contains(dec.Trained, "whole network") {
		t.Fatalf("decision %+v", dec)
	}
	// The shipped model is a replicate's (trial 2 or 3, the better on
	// validation), not the search trial's: the search value was picked
	// for being good.
	f0 := dec.Study.Finalists[0]
	want := f0.Runs[0]
	if f0.Values[1] < f0.Values[0] {
		want = f0.Runs[1]
	}
	if dec.Study.Winner != 1 || dec.Study.Run != want || (want != 2 && want != 3) {
		t.Fatalf("shipped trial %d of finalist %d (replicates %v: %v), want replicate %d of trial 1", dec.Study.Run, dec.Study.Winner, f0.Runs, f0.Values, want)
	}
	b, err := inference.OpenBundle(dec.Bundle, inference.BundleOptions{TrustedKeys: []ed25519.PublicKey{f.pub}})
	if err != nil {
		t.Fatalf("new bundle: %v", err)
	}
	defer b.Close()
	exported, err := os.ReadFile(filepath.Join(r.cfg.Out, StudyDir, "trials", fmt.Sprintf("%04d", want), inference.BackboneFile))
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Manifest.Files[inference.BackboneFile]; got != sha256hex(exported) || got == f.bundle.Manifest.Files[inference.BackboneFile] {
		t.Fatalf("bundle backbone %s: want the replicate's export %s, not the incumbent's", got, sha256hex(exported))
	}
	card, err := b.ReadFile("MODEL_CARD.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"whole network", fmt.Sprintf("replicate trial %d", want), "ONNX Runtime", dec.Snapshot} {
		if !bytes.Contains(card, []byte(want)) {
			t.Errorf("card lacks %q", want)
		}
	}
	// 1,000 crops leave too few held-out cells for a plausibility
	// reference, and their slides are too small for the incumbent's
	// slide-by-slide drift calibration: the bundle ships without the one
	// and with cells mixed for the other, and says so.
	if len(dec.Warnings) != 2 || !strings.Contains(dec.Warnings[0], "slide by slide") || !strings.Contains(dec.Warnings[1], "plausibility") ||
		!bytes.Contains(card, []byte("No plausibility reference")) {
		t.Errorf("warnings %q", dec.Warnings)
	}
	if nb, err := drift.LoadBaseline(filepath.Join(dec.Bundle, "baseline.json")); err != nil || nb.Detector.Null != drift.NullExchangeable {
		t.Errorf("retuned baseline: %v, want the cells-mixed null model", err)
	}
	// The test split was never given to a trial.
	test := testSamples(t, r.cfg.Out)
	for _, split := range []string{tuning.SplitTrain, tuning.SplitVal} {
		raw, err := os.ReadFile(filepath.Join(r.cfg.Out, DataDir, split, "labels.csv"))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range test {
			p, _ := filepath.Abs(s.Path)
			if bytes.Contains(raw, []byte(p+",")) {
				t.Fatalf("the %s folder holds the test image %s", split, p)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(r.cfg.Out, CandidateDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the scoring bundle was left behind: %v", err)
	}

	checkTestAccuracy(t, b, test, dec)
}

// checkTestAccuracy: the shipped bundle's own classifier, in ONNX Runtime,
// gives exactly the sealed test's accuracy the decision reports.
func checkTestAccuracy(t *testing.T, b *inference.Bundle, test []tuning.Sample, dec *Decision) {
	t.Helper()
	clf, err := inference.NewClassifier(b, inference.ClassifierOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer clf.Close()
	correct := 0
	err = clf.Stream(context.Background(), len(test), func(i int) inference.Input { return inference.Input{Path: test[i].Path} }, func(res inference.Result) {
		if res.Err != nil {
			t.Errorf("%s: %v", test[res.Index].Path, res.Err)
			return
		}
		if (res.Label == "parasitized") == (test[res.Index].Label == b.Manifest.ClassIndex("parasitized")) {
			correct++
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := float64(correct) / float64(len(test)); got != dec.Test.New.Accuracy.Value {
		t.Fatalf("the bundle's accuracy on the test split is %v, the decision says %v", got, dec.Test.New.Accuracy.Value)
	}
}

// TestNetworkStudyNeedsItsTrainer: a network study without a usable
// recipe folder or interpreter is refused at once, naming the flag, before
// any image is read.
func TestNetworkStudyNeedsItsTrainer(t *testing.T) {
	f := setup(t)
	for _, tc := range []struct {
		name, recipe, python, want string
	}{
		{"no recipe", "", testPython, "--recipe"},
		{"recipe without finetune.py", t.TempDir(), testPython, "finetune.py"},
		{"no python", filepath.Join("..", "..", "models", "recipe"), "", "--python"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRun(t, f, nil, []string{filepath.Join(t.TempDir(), "absent")}, "")
			r.cfg.Study, r.cfg.Recipe, r.cfg.Python = StudyNamed(StudyNetwork), tc.recipe, tc.python
			dec, err := Run(context.Background(), r.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || dec != nil {
				t.Fatalf("got %v, %v; want an error naming %s", dec, err, tc.want)
			}
		})
	}
}

func testSamples(t *testing.T, out string) []tuning.Sample {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(out, SnapshotFile))
	if err != nil {
		t.Fatal(err)
	}
	var snap snapshotRecord
	if err := json.Unmarshal(raw, &snap); err != nil {
		t.Fatal(err)
	}
	var test []tuning.Sample
	for _, s := range snap.Samples {
		if s.Split == tuning.SplitTest {
			test = append(test, s)
		}
	}
	return test
}
