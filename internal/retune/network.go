package retune

import (
	"context"
	"crypto/ed25519"
	"encoding/csv"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/tuning"
)

// Placeholders a command study's arguments may hold; the retune replaces
// them before each trial.
const (
	PlaceholderPython    = "{python}"
	PlaceholderRecipe    = "{recipe}"
	PlaceholderIncumbent = "{incumbent}"
	PlaceholderTrain     = "{train}"
	PlaceholderVal       = "{val}"
)

// Folders a command study's trials read, under Out.
const (
	// DataDir holds the snapshot's train and validation splits as labelled
	// folders (labels.csv with absolute paths; no image is copied).
	DataDir = "data"
	// IncumbentDir holds the incumbent bundle's files as verified when it
	// was opened, so that a trial reads exactly the model the device runs
	// (the bundle may have been given as an archive).
	IncumbentDir = "incumbent"
	// CandidateDir is the winner's scoring bundle, removed once scored.
	CandidateDir = "candidate"
)

// FinetuneScript is the trial command models/recipe provides.
const FinetuneScript = "finetune.py"

// isCommand reports whether the study trains through a trial command (the
// whole network, say) rather than the built-in head.
func isCommand(s *tuning.Study) bool { return len(s.Objective.Command) > 0 }

// commandArgv is the study's command with its placeholders filled in.
func (r *run) commandArgv() ([]string, error) {
	repl := map[string]string{
		PlaceholderIncumbent: filepath.Join(r.out, IncumbentDir),
		PlaceholderTrain:     filepath.Join(r.out, DataDir, tuning.SplitTrain),
		PlaceholderVal:       filepath.Join(r.out, DataDir, tuning.SplitVal),
		PlaceholderRecipe:    r.cfg.Recipe,
		PlaceholderPython:    r.cfg.Python,
	}
	argv := make([]string, len(r.cfg.Study.Objective.Command))
	for i, a := range r.cfg.Study.Objective.Command {
		if strings.Contains(a, PlaceholderRecipe) {
			if r.cfg.Recipe == "" {
				return nil, fmt.Errorf("retune: study %s: its command uses %s, but no recipe folder was given (--recipe DIR, the folder holding %s)", r.cfg.Study.Name, PlaceholderRecipe, FinetuneScript)
			}
			if _, err := os.Stat(filepath.Join(r.cfg.Recipe, FinetuneScript)); err != nil {
				return nil, fmt.Errorf("retune: study %s: recipe folder %s: %w (want the folder holding %s, models/recipe in the source tree)", r.cfg.Study.Name, r.cfg.Recipe, err, FinetuneScript)
			}
		}
		if strings.Contains(a, PlaceholderPython) && r.cfg.Python == "" {
			return nil, fmt.Errorf("retune: study %s: its command uses %s, but no Python interpreter was given (--python)", r.cfg.Study.Name, PlaceholderPython)
		}
		for k, v := range repl {
			a = strings.ReplaceAll(a, k, v)
		}
		argv[i] = a
	}
	return argv, nil
}

// commandTrial prepares what a command study's trials read (the split
// folders and the incumbent's files) and returns the trial function.
func (r *run) commandTrial() (tuning.TrialFunc, error) {
	argv, err := r.commandArgv()
	if err != nil {
		return nil, err
	}
	if err := r.writeIncumbent(); err != nil {
		return nil, err
	}
	for _, split := range []string{tuning.SplitTrain, tuning.SplitVal} {
		if err := r.writeSplit(split); err != nil {
			return nil, err
		}
	}
	metric := r.cfg.Study.Objective.Metric
	return func(ctx context.Context, in tuning.TrialInput, keep func(int, float64) bool) (tuning.Outcome, error) {
		return tuning.RunCommand(ctx, argv, in, metric, keep)
	}, nil
}

// writeIncumbent writes the incumbent's backbone, head and manifest.
func (r *run) writeIncumbent() error {
	dir := filepath.Join(r.out, IncumbentDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("retune: %w", err)
	}
	// The manifest as parsed: the trainer copies it into its export (which
	// the retune does not use) and reads nothing a device trusts from it.
	mj, err := inference.MarshalManifest(r.cfg.Incumbent.Manifest)
	if err != nil {
		return fmt.Errorf("retune: %w", err)
	}
	if err := writeAtomic(filepath.Join(dir, inference.ManifestFile), mj); err != nil {
		return err
	}
	for _, name := range []string{inference.BackboneFile, *r.cfg.Incumbent.Manifest.Head} {
		b, err := r.cfg.Incumbent.ReadFile(name)
		if err != nil {
			return fmt.Errorf("retune: incumbent %s: %w", name, err)
		}
		// The trial protocol's trainer reads the head as head.safetensors.
		dst := name
		if name == *r.cfg.Incumbent.Manifest.Head {
			dst = "head.safetensors"
		}
		if err := writeAtomic(filepath.Join(dir, dst), b); err != nil {
			return err
		}
	}
	return nil
}

// writeSplit writes one split of the snapshot as a labelled folder:
// labels.csv with absolute image paths, the class names, and the slide
// qualified by its device (two devices may both have a slide "s-1").
func (r *run) writeSplit(split string) error {
	dir := filepath.Join(r.out, DataDir, split)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("retune: %w", err)
	}
	var b strings.Builder
	w := csv.NewWriter(&b)
	w.Write([]string{"path", "label", "slide"})
	classes := r.cfg.Incumbent.Manifest.Classes
	for _, i := range r.snap.Rows(split, "") {
		s := r.snap.Samples[i]
		p, err := filepath.Abs(s.Path)
		if err != nil {
			return fmt.Errorf("retune: %w", err)
		}
		slide := s.Slide
		if s.Device != "" {
			slide = s.Device + "/" + s.Slide
		}
		w.Write([]string{p, classes[s.Label], s.Domain + ":" + slide})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return fmt.Errorf("retune: %w", err)
	}
	return writeAtomic(filepath.Join(dir, "labels.csv"), []byte(b.String()))
}

// winnerFiles reads the network and head the winning trial exported.
func (r *run) winnerFiles() (backbone, head []byte, err error) {
	dir := filepath.Join(r.out, StudyDir, "trials", fmt.Sprintf("%04d", r.dec.Study.Run))
	if backbone, err = os.ReadFile(filepath.Join(dir, inference.BackboneFile)); err != nil {
		return nil, nil, fmt.Errorf("retune: the chosen trial %d wrote no backbone: %w", r.dec.Study.Run, err)
	}
	if head, err = os.ReadFile(filepath.Join(dir, "head.safetensors")); err != nil {
		return nil, nil, fmt.Errorf("retune: the chosen trial %d wrote no head: %w", r.dec.Study.Run, err)
	}
	return backbone, head, nil
}

// candidate is the chosen network loaded in ONNX Runtime, the engine a
// device runs, so that the threshold and the sealed test are measured on
// exactly what will be deployed, not on the trainer's own arithmetic.
type candidate struct {
	dir string
	b   *inference.Bundle
	clf *inference.Classifier
}

// openCandidate seals the chosen network into a scoring bundle (the
// incumbent's version and threshold: it is never shipped) and loads it.
func (r *run) openCandidate(backbone, head []byte) (*candidate, error) {
	c := &candidate{dir: filepath.Join(r.out, CandidateDir)}
	var err error
	if c.b, err = r.assemble(c.dir, r.cfg.Incumbent.Manifest.Version, backbone, head, r.cfg.Incumbent.Manifest.Threshold, nil); err != nil {
		os.RemoveAll(c.dir)
		return nil, fmt.Errorf("retune: the chosen network: %w", err)
	}
	if c.clf, err = inference.NewClassifier(c.b, inference.ClassifierOptions{NoFocus: true, NoAppearance: true}); err != nil {
		c.b.Close()
		os.RemoveAll(c.dir)
		return nil, fmt.Errorf("retune: the chosen network does not load: %w", err)
	}
	n := r.feats.N()
	r.pNew, r.newFeat = make([]float64, n), make([][]float32, n)
	for i := range r.pNew {
		r.pNew[i] = math.NaN()
	}
	return c, nil
}

func (c *candidate) close() {
	c.clf.Close()
	c.b.Close()
	os.RemoveAll(c.dir)
}

// score fills pNew and newFeat for rows.
func (r *run) score(ctx context.Context, c *candidate, rows []int) error {
	r.log.Info("retune scores the chosen network", "images", len(rows))
	var failed error
	err := c.clf.Stream(ctx, len(rows), func(k int) inference.Input {
		return inference.Input{Path: r.snap.Samples[rows[k]].Path}
	}, func(x inference.Result) {
		if x.Err != nil {
			failed = errors.Join(failed, x.Err)
			return
		}
		r.pNew[rows[x.Index]], r.newFeat[rows[x.Index]] = x.PParasitized, x.Features
	})
	if err != nil {
		return fmt.Errorf("retune: score the chosen network: %w", err)
	}
	if failed != nil {
		return fmt.Errorf("retune: the chosen network failed on images the incumbent classified: %w", failed)
	}
	return nil
}

// assemble writes a bundle into dir (backbone, head, extra files and a
// manifest derived from the incumbent's), seals it with the fleet key and
// opens it as a device would: hashes, the signature by the key's public
// half, shapes and a smoke run.
func (r *run) assemble(dir, version string, backbone, head []byte, threshold float64, extra map[string][]byte) (*inference.Bundle, error) {
	inc := r.cfg.Incumbent
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	files := map[string][]byte{inference.BackboneFile: backbone, headFile: head}
	for k, v := range extra {
		files[k] = v
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return nil, err
		}
	}
	man := *inc.Manifest
	hn := headFile
	man.Version, man.Created, man.Threshold, man.Head, man.Baseline = version, r.now().UTC().Truncate(1e9), threshold, &hn, ""
	if _, ok := extra[baselineFile]; ok {
		man.Baseline = baselineFile
	}
	man.Classes = append([]string(nil), inc.Manifest.Classes...)
	man.Files, man.Signer, man.Signature = map[string]string{}, "", ""
	mj, err := inference.MarshalManifest(&man)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, inference.ManifestFile), mj, 0o644); err != nil {
		return nil, err
	}
	if _, err := inference.SealBundle(dir, r.cfg.Key); err != nil {
		return nil, err
	}
	b, err := inference.OpenBundle(dir, inference.BundleOptions{TrustedKeys: []ed25519.PublicKey{r.cfg.Key.Public().(ed25519.PublicKey)}})
	if err != nil {
		return nil, fmt.Errorf("the bundle does not verify: %w", err)
	}
	return b, nil
}

// trainedBy says which layers the study's trials trained, for the card.
func trainedBy(s *tuning.Study, params tuning.Params) string {
	if !isCommand(s) {
		return trainedHead
	}
	from := 0
	if v, ok := params["unfreeze_from"]; ok {
		switch x := v.(type) {
		case int:
			from = x
		case float64:
			from = int(x)
		}
	}
	switch {
	case from <= 0:
		return "the whole network: every backbone block and the classifier head, fine-tuned from the incumbent's weights by the study's trial command"
	case from >= 13:
		return "the classifier head only, by the study's trial command; the backbone's weights are the incumbent's (re-exported)"
	default:
		return fmt.Sprintf("backbone blocks %d to 12 and the classifier head, fine-tuned from the incumbent's weights by the study's trial command; blocks 0 to %d are the incumbent's (re-exported)", from, from-1)
	}
}
