package retune

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"time"

	"github.com/scopewatch/scopewatch/drift"
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/labelset"
	"github.com/scopewatch/scopewatch/tuning"
)

// Domain names of the snapshot's inputs.
const (
	DomainNominal  = "nominal"
	DomainFeedback = "feedback"
)

// Files and folders of a retune's output folder.
const (
	SnapshotFile = "snapshot.json"
	FeaturesFile = "features.swf"
	ScoresFile   = "incumbent-scores.json"
	DecisionFile = "decision.json"
	StudyDir     = "study"
	BundleDir    = "bundle"
)

// DecisionSchema names the decision file's format.
const DecisionSchema = "scopewatch.retune/v1"

// ErrRefused is wrapped by every refusal: the inputs or the result do not
// justify a new model. The decision file says why; no bundle is written.
var ErrRefused = errors.New("retune refused")

var (
	//go:embed network-study.yaml
	networkStudy []byte
	//go:embed head-study.yaml
	headStudy []byte
)

// Names of the built-in studies (StudyNamed).
const (
	StudyNetwork = "network"
	StudyHead    = "head"
)

// DefaultStudy is the study a retune runs unless given another: the
// network study. Neither built-in study has a scientific parameter: a
// retune asks for the best model on this data, not which of two choices is
// better, so everything it tunes is a nuisance parameter (tuned, then
// reported).
func DefaultStudy() *tuning.Study { return StudyNamed(StudyNetwork) }

// StudyNamed returns a built-in study: "network" fine-tunes the whole
// network through models/recipe/finetune.py (network-study.yaml; needs
// Config.Recipe and the recipe's Python), "head" trains only the head on
// the incumbent's cached features in Go (head-study.yaml: quick, no
// Python, but it cannot absorb a shift the features do not separate). It
// returns nil for another name.
func StudyNamed(name string) *tuning.Study {
	var raw []byte
	switch name {
	case StudyNetwork:
		raw = networkStudy
	case StudyHead:
		raw = headStudy
	default:
		return nil
	}
	s, err := tuning.Decode(bytes.NewReader(raw))
	if err != nil {
		panic("retune: built-in study " + name + ": " + err.Error())
	}
	return s
}

// Scorer classifies images: the incumbent's classifier
// (*inference.Classifier), which gives the backbone features, the
// incumbent's score and the focus of each.
type Scorer interface {
	Stream(ctx context.Context, n int, input func(i int) inference.Input, out func(inference.Result)) error
}

var _ Scorer = (*inference.Classifier)(nil)

// Config is what a retune needs. Incumbent, Scorer, Out, Key and Ledger
// are required, and at least one Feedback folder.
type Config struct {
	Incumbent *inference.Bundle
	Scorer    Scorer
	// Nominal are labelled folders of the incumbent's own domain; Feedback
	// the new labelled data. Both are split and tested on their own.
	Nominal, Feedback []string
	Out               string
	Key               ed25519.PrivateKey
	Ledger            *tuning.Ledger
	// Study replaces DefaultStudy: the built-in head, or a trial command
	// that writes backbone.onnx and head.safetensors into its trial folder
	// (models/recipe/finetune.py), its arguments holding the placeholders
	// in network.go.
	Study *tuning.Study
	// Recipe is the folder holding finetune.py, for a study whose command
	// names {recipe}.
	Recipe string
	// Python is the interpreter for a study whose command names {python}:
	// one that has the recipe's torch (Debian's python3-torch is
	// /usr/bin/python3's).
	Python   string
	Snapshot tuning.SnapshotOptions
	// BaselineSims overrides the incumbent's number of calibration
	// streams (0: the incumbent's).
	BaselineSims int
	// MaxNominalDrop is how far the new model's accuracy on the nominal
	// test slides may fall below the incumbent's (default 0.01).
	MaxNominalDrop float64
	// Prevalence is the parasitized share the threshold is chosen for
	// (tuning.ChooseThreshold); 0: the incumbent baseline's prevalence, the
	// stream the deployed model counts, else the validation split's own.
	Prevalence float64
	// BootstrapReps for the comparison's intervals (default 2000).
	BootstrapReps int
	Log           *slog.Logger     // nil: discard
	Now           func() time.Time // nil: time.Now
}

// Decision is what a retune concluded, written to Out/decision.json.
type Decision struct {
	Schema     string                       `json:"schema"`
	At         time.Time                    `json:"at"`
	Snapshot   string                       `json:"snapshot"`
	Samples    int                          `json:"samples"`
	Duplicates int                          `json:"duplicates"`
	Splits     []tuning.SplitCount          `json:"splits"`
	Grouping   map[string]string            `json:"grouping"`
	Inputs     map[string][]string          `json:"inputs"`
	Incumbent  string                       `json:"incumbent"`
	Study      *StudyResult                 `json:"study,omitempty"`
	Threshold  float64                      `json:"threshold,omitempty"`
	Prevalence float64                      `json:"threshold_prevalence,omitempty"`
	Test       *tuning.Comparison           `json:"test,omitempty"`
	PerDomain  map[string]tuning.Comparison `json:"per_domain,omitempty"`
	Accepted   bool                         `json:"accepted"`
	Reasons    []string                     `json:"reasons,omitempty"`
	Version    string                       `json:"version,omitempty"`
	Bundle     string                       `json:"bundle,omitempty"`
	BundleSHA  string                       `json:"bundle_manifest_sha256,omitempty"`
	ModelID    string                       `json:"model_id,omitempty"`
	Trained    string                       `json:"trained"`
	// Warnings are what a reviewer must know about an accepted bundle.
	Warnings []string `json:"warnings,omitempty"`
}

// StudyResult is the part of the study the card reports.
type StudyResult struct {
	Name      string            `json:"name"`
	Trials    int               `json:"trials"`
	Complete  int               `json:"complete"`
	Pruned    int               `json:"pruned"`
	Failed    int               `json:"failed"`
	Metric    string            `json:"metric"`
	Finalists []tuning.Finalist `json:"finalists"`
	Warnings  []string          `json:"warnings,omitempty"`
	Winner    int               `json:"winner_trial"`
	// Run is the trial whose model is shipped: the winner's best
	// replicate (its folder under trials/ holds what a command wrote).
	Run       int           `json:"run"`
	Params    tuning.Params `json:"params"`
	Seed      int64         `json:"seed"`
	Value     float64       `json:"value"`
	Epochs    int           `json:"epochs"`
	BatchSize int           `json:"batch_size"`
}

// trainedHead is what the card says the built-in head study trained.
const trainedHead = "the classifier head only (fc1 576->hidden, ReLU, fc2 hidden->2); the backbone is the incumbent's, byte for byte"

// Names of the bundle's files a retune writes besides the backbone.
const (
	headFile     = "head.safetensors"
	baselineFile = "baseline.json"
	cardFile     = "MODEL_CARD.md"
)

// Run performs the retune. A refusal returns the decision and an error
// wrapping ErrRefused; an error that stops the retune otherwise (cancelled,
// unreadable input, a full disk) returns a nil decision. Run on an Out
// that holds an unfinished retune of the same snapshot resumes it: the
// features are reused and the study continues from its journal.
func Run(ctx context.Context, cfg Config) (*Decision, error) {
	if cfg.Incumbent == nil || cfg.Scorer == nil || cfg.Out == "" || cfg.Key == nil || cfg.Ledger == nil || len(cfg.Feedback) == 0 {
		return nil, errors.New("retune: incumbent, scorer, out folder, key, ledger and at least one feedback folder are required")
	}
	r := &run{cfg: cfg, log: cfg.Log, now: cfg.Now}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.cfg.MaxNominalDrop == 0 {
		r.cfg.MaxNominalDrop = 0.01
	}
	if r.cfg.BootstrapReps == 0 {
		r.cfg.BootstrapReps = 2000
	}
	if r.cfg.Study == nil {
		r.cfg.Study = DefaultStudy()
	}
	if o := r.cfg.Study.Objective; o.Builtin != tuning.BuiltinHead && len(o.Command) == 0 {
		return nil, fmt.Errorf("retune: study %s: objective must be builtin: head or a trial command that exports backbone.onnx and head.safetensors", r.cfg.Study.Name)
	}
	var err error
	if r.out, err = filepath.Abs(cfg.Out); err != nil {
		return nil, fmt.Errorf("retune: %w", err)
	}
	if r.cfg.Recipe != "" {
		if r.cfg.Recipe, err = filepath.Abs(r.cfg.Recipe); err != nil {
			return nil, fmt.Errorf("retune: %w", err)
		}
	}
	if isCommand(r.cfg.Study) {
		// A misconfigured trainer is found before the features pass.
		if _, err := r.commandArgv(); err != nil {
			return nil, err
		}
	}
	return r.run(ctx)
}

type run struct {
	cfg  Config
	log  *slog.Logger
	now  func() time.Time
	out  string
	snap *tuning.Snapshot
	dec  *Decision

	incBase    *drift.Baseline // nil when the incumbent has none
	prevalence float64

	feats  *tuning.Features
	pOld   []float64
	focus  []float64
	appear [][]float64 // each row's appearance statistics
	pNew   []float64
	// newFeat are the chosen network's features of the rows it scored
	// (nil with the head study: the backbone, hence feats, is unchanged).
	newFeat [][]float32
	labels  []int // 1 = parasitized, per row
}

func (r *run) run(ctx context.Context) (*Decision, error) {
	m := r.cfg.Incumbent.Manifest
	pos, neg := m.ClassIndex("parasitized"), m.ClassIndex("uninfected")
	if pos < 0 || neg < 0 || len(m.Classes) != 2 {
		return nil, fmt.Errorf("retune: incumbent %s: classes %v: want uninfected and parasitized", r.cfg.Incumbent.Source, m.Classes)
	}
	if m.Head == nil {
		return nil, fmt.Errorf("retune: incumbent %s has no head.safetensors; only a bundle with a Go head can be retuned", r.cfg.Incumbent.Source)
	}
	if name := m.Baseline; name != "" {
		raw, err := r.cfg.Incumbent.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("retune: incumbent baseline: %w", err)
		}
		if r.incBase, err = drift.DecodeBaselineBytes(raw); err != nil {
			return nil, fmt.Errorf("retune: incumbent baseline: %w", err)
		}
	}
	r.prevalence = r.cfg.Prevalence
	if r.prevalence == 0 && r.incBase != nil {
		r.prevalence = r.incBase.Prevalence
	}
	r.dec = &Decision{Schema: DecisionSchema, Incumbent: m.Version, Trained: trainedBy(r.cfg.Study, nil),
		Inputs: map[string][]string{DomainNominal: r.cfg.Nominal, DomainFeedback: r.cfg.Feedback}}

	samples, err := r.readSamples(pos)
	if err != nil {
		return nil, err
	}
	opts := r.cfg.Snapshot
	opts.Classes = 2
	r.snap, err = tuning.NewSnapshot(samples, opts)
	if err != nil {
		return r.refuse(err.Error(), err)
	}
	r.dec.Snapshot, r.dec.Samples, r.dec.Duplicates = r.snap.Hash, len(r.snap.Samples), r.snap.Duplicates
	r.dec.Splits, r.dec.Grouping = r.snap.Counts(pos), r.snap.Grouping
	r.log.Info("retune snapshot", "snapshot", r.snap.Hash, "samples", len(r.snap.Samples), "duplicates", r.snap.Duplicates)
	if err := r.claimOut(); err != nil {
		return nil, err
	}
	// A snapshot whose test split was spent on another retune is refused
	// before hours are spent training for nothing.
	if e, err := r.cfg.Ledger.Evaluated(r.snap.Hash); err != nil {
		return nil, err
	} else if e != nil && e.Out != r.out {
		err := fmt.Errorf("%w: snapshot %s was evaluated on %s for %s (%s)", tuning.ErrSealedTestUsed, r.snap.Hash[:12], e.At.Format(time.RFC3339), e.Version, e.Out)
		return r.refuse(err.Error(), err)
	}
	if err := r.features(ctx, pos); err != nil {
		return nil, err
	}
	if err := r.study(ctx); err != nil {
		return nil, err
	}
	return r.finish(ctx)
}

// readSamples reads every input folder's labels.csv and hashes the images.
func (r *run) readSamples(pos int) ([]tuning.Sample, error) {
	var out []tuning.Sample
	for _, in := range []struct {
		domain string
		dirs   []string
	}{{DomainNominal, r.cfg.Nominal}, {DomainFeedback, r.cfg.Feedback}} {
		for _, dir := range in.dirs {
			rows, hasSlide, err := labelset.ReadCSV(filepath.Join(dir, "labels.csv"))
			if err != nil {
				return nil, fmt.Errorf("retune: %w", err)
			}
			if !hasSlide {
				return nil, fmt.Errorf("retune: %s: labels.csv has no slide column; the splits keep a slide's cells together", dir)
			}
			for _, row := range rows {
				sum, err := hashFile(row.Path)
				if err != nil {
					return nil, fmt.Errorf("retune: %s: %w", dir, err)
				}
				label := 1 - pos
				if row.Positive {
					label = pos
				}
				out = append(out, tuning.Sample{Path: row.Path, SHA256: sum, Label: label, Slide: row.Slide, Device: row.Device, Domain: in.domain})
			}
		}
	}
	return out, nil
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// snapshotRecord is Out/snapshot.json: which snapshot the folder holds.
type snapshotRecord struct {
	Hash    string          `json:"hash"`
	Samples []tuning.Sample `json:"samples"`
}

// claimOut makes Out, or checks that it holds this snapshot's retune.
func (r *run) claimOut() error {
	path := filepath.Join(r.out, SnapshotFile)
	raw, err := os.ReadFile(path)
	switch {
	case err == nil:
		var rec snapshotRecord
		if err := json.Unmarshal(raw, &rec); err != nil {
			return fmt.Errorf("retune: %s: %v", path, err)
		}
		if rec.Hash != r.snap.Hash {
			return fmt.Errorf("retune: %s holds the retune of snapshot %s, not of these inputs (%s); choose another --out", r.out, short(rec.Hash), short(r.snap.Hash))
		}
		if _, err := os.Stat(filepath.Join(r.out, BundleDir)); err == nil {
			return fmt.Errorf("retune: %s already holds a finished bundle; choose another --out", r.out)
		}
		r.log.Info("retune resumes", "out", r.out)
		return nil
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("retune: %w", err)
	}
	if entries, err := os.ReadDir(r.out); err == nil && len(entries) > 0 {
		return fmt.Errorf("retune: %s is not empty and holds no retune; choose an empty or new --out", r.out)
	}
	if err := os.MkdirAll(r.out, 0o755); err != nil {
		return fmt.Errorf("retune: %w", err)
	}
	j, err := json.MarshalIndent(snapshotRecord{Hash: r.snap.Hash, Samples: r.snap.Samples}, "", " ")
	if err != nil {
		return err
	}
	return writeAtomic(path, j)
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("retune: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("retune: %w", err)
	}
	return nil
}

// incumbentScores is Out/incumbent-scores.json: the incumbent's score and
// each crop's focus, row by row with the features file.
type incumbentScores struct {
	Model string    `json:"model"`
	P     []float64 `json:"p"`
	Focus []float64 `json:"focus"`
	// Appearance is each row's inference.AppearanceNames statistics, for
	// the new baseline's plausibility reference.
	Appearance [][]float64 `json:"appearance"`
}

// features runs every sample through the incumbent once, or reads the
// cached result of an earlier run on this snapshot.
func (r *run) features(ctx context.Context, pos int) error {
	b := r.cfg.Incumbent
	model := fmt.Sprintf("%s %s sha256:%s", b.Manifest.Name, b.Manifest.Version, b.ManifestSHA256)
	fpath, spath := filepath.Join(r.out, FeaturesFile), filepath.Join(r.out, ScoresFile)
	n := len(r.snap.Samples)
	r.labels = make([]int, n)
	for i, s := range r.snap.Samples {
		if s.Label == pos {
			r.labels[i] = 1
		}
	}
	if f, err := tuning.ReadFeatures(fpath); err == nil && f.Model == model && f.N() == n {
		var sc incumbentScores
		if raw, err := os.ReadFile(spath); err == nil && json.Unmarshal(raw, &sc) == nil && sc.Model == model && len(sc.P) == n && len(sc.Appearance) == n {
			r.feats, r.pOld, r.focus, r.appear = f, sc.P, sc.Focus, sc.Appearance
			r.log.Info("retune features reused", "file", fpath)
			return nil
		}
	}
	r.log.Info("retune features", "images", n, "model", model)
	res := make([]inference.Result, n)
	err := r.cfg.Scorer.Stream(ctx, n, func(i int) inference.Input {
		return inference.Input{Path: r.snap.Samples[i].Path}
	}, func(x inference.Result) { res[x.Index] = x })
	if err != nil {
		return fmt.Errorf("retune: features: %w", err)
	}
	f := &tuning.Features{Model: model, Dim: b.Manifest.Outputs.FeaturesDim, Classes: b.Manifest.Classes}
	sc := incumbentScores{Model: model, P: make([]float64, n), Focus: make([]float64, n), Appearance: make([][]float64, n)}
	var failed []string
	for i, x := range res {
		s := r.snap.Samples[i]
		if x.Err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", s.Path, x.Err))
			continue
		}
		f.X = append(f.X, x.Features...)
		f.Label = append(f.Label, s.Label)
		f.Slide = append(f.Slide, s.Slide)
		f.Path = append(f.Path, s.Path)
		sc.P[i], sc.Focus[i], sc.Appearance[i] = x.PParasitized, x.Focus, x.Appearance.Values()
	}
	if len(failed) > 0 {
		// A snapshot is a fixed set; training on the rows that happened to
		// decode would be another one. The file is the user's to fix.
		return fmt.Errorf("retune: %d of %d images could not be classified by the incumbent (first: %s); remove or replace them", len(failed), n, failed[0])
	}
	if err := tuning.WriteFeatures(fpath, f); err != nil {
		return fmt.Errorf("retune: %w", err)
	}
	j, err := json.Marshal(sc)
	if err != nil {
		return err
	}
	if err := writeAtomic(spath, j); err != nil {
		return err
	}
	r.feats, r.pOld, r.focus, r.appear = f, sc.P, sc.Focus, sc.Appearance
	return nil
}

// study runs (or resumes) the tuning study on the train and validation
// rows and retrains the winner.
func (r *run) study(ctx context.Context) error {
	s := r.cfg.Study
	dir := filepath.Join(r.out, StudyDir)
	var trial tuning.TrialFunc
	var batch int
	if isCommand(s) {
		var err error
		if trial, err = r.commandTrial(); err != nil {
			return err
		}
	} else {
		var err error
		if trial, batch, err = r.headTrial(dir); err != nil {
			return err
		}
	}
	runner := &tuning.Runner{Study: s, Dir: dir, Trial: trial, Log: r.log, Now: r.now}
	sum, err := runner.Run(ctx)
	if err != nil {
		return fmt.Errorf("retune: study: %w", err)
	}
	if _, err := tuning.WriteReport(dir); err != nil {
		// The study ran; its report is a view of the journal and can be
		// redrawn with `tune report`.
		r.log.Warn("retune report", "err", err.Error())
	}
	if sum.Best == nil {
		return fmt.Errorf("retune: study %s: no trial completed (%d failed, %d pruned); see %s", s.Name, sum.Failed, sum.Pruned, dir)
	}
	res := &StudyResult{Name: s.Name, Trials: sum.Trials, Complete: sum.Complete, Pruned: sum.Pruned, Failed: sum.Failed,
		Metric: s.Objective.Metric, Finalists: sum.Replicates, Warnings: sum.Warnings, Epochs: s.Budget.MaxEpochs, BatchSize: batch}
	// The winner is the finalist with the best mean over its replicates
	// (its search value was picked for being good); the replicate kept is
	// its best seed. Without replicates it is the best search trial.
	res.Winner, res.Run, res.Params, res.Value, res.Seed = sum.Best.Trial, sum.Best.Trial, sum.Best.Params, sum.Best.Value, 0
	if seed, ok := r.trialSeed(dir, sum.Best.Trial); ok {
		res.Seed = seed
	}
	if len(sum.Replicates) > 0 && len(sum.Replicates[0].Values) > 0 {
		f := sum.Replicates[0]
		k := 0
		for i, v := range f.Values {
			if s.Better(v, f.Values[k]) {
				k = i
			}
		}
		res.Winner, res.Run, res.Params, res.Value, res.Seed = f.Trial, f.Runs[k], f.Params, f.Values[k], f.Seeds[k]
	}
	r.dec.Study = res
	r.dec.Trained = trainedBy(s, res.Params)
	return nil
}

// headTrial is the built-in head's trial on the cached features, with the
// batch size every trial and the retrained winner use.
func (r *run) headTrial(dir string) (tuning.TrialFunc, int, error) {
	s := r.cfg.Study
	train, val := r.snap.Rows(tuning.SplitTrain, ""), r.snap.Rows(tuning.SplitVal, "")
	obj, err := tuning.HeadObjectiveOn(r.feats, train, val, s.Objective.Metric)
	if err != nil {
		return nil, 0, fmt.Errorf("retune: %w", err)
	}
	var batch int
	if v, ok := s.Fixed()[tuning.HeadBatchSize]; ok {
		cfg, err := tuning.ParseHeadParams(tuning.Params{tuning.HeadBatchSize: v})
		if err != nil {
			return nil, 0, fmt.Errorf("retune: study %s: %w", s.Name, err)
		}
		batch = cfg.BatchSize
	} else if batch = tuning.JournalledBatchSize(dir); batch == 0 {
		// A probed batch size depends on the machine's load; the journal
		// keeps it for a resume, but another machine may choose another.
		batch = tuning.ProbeBatchSize(r.feats, nil, time.Now)
	}
	trial := func(ctx context.Context, in tuning.TrialInput, keep func(int, float64) bool) (tuning.Outcome, error) {
		ps := maps.Clone(in.Params)
		if _, ok := ps[tuning.HeadBatchSize]; !ok {
			ps[tuning.HeadBatchSize] = batch
		}
		in.Params = ps
		return obj(ctx, in, keep)
	}
	return trial, batch, nil
}

// trialSeed reads a search trial's seed from the journal.
func (r *run) trialSeed(dir string, trial int) (int64, bool) {
	recs, err := tuning.ReadJournal(filepath.Join(dir, "journal.jsonl"))
	if err != nil {
		return 0, false
	}
	for _, rec := range recs {
		if rec.Type == tuning.RecordAsk && rec.Trial == trial {
			return rec.Seed, true
		}
	}
	return 0, false
}

// finish obtains the chosen model (the head retrained, or the network a
// trial exported) and scores it, seals and runs the test, decides, and
// writes the bundle when the decision is to ship.
func (r *run) finish(ctx context.Context) (*Decision, error) {
	m := r.cfg.Incumbent.Manifest
	var backbone, headBytes []byte
	var cand *candidate
	var err error
	if isCommand(r.cfg.Study) {
		if backbone, headBytes, err = r.winnerFiles(); err != nil {
			return nil, err
		}
		if cand, err = r.openCandidate(backbone, headBytes); err != nil {
			return nil, err
		}
		defer cand.close()
		// Validation first: the threshold and the model's identity are
		// fixed before any test image is scored.
		if err := r.score(ctx, cand, r.snap.Rows(tuning.SplitVal, "")); err != nil {
			return nil, err
		}
	} else {
		if backbone, err = r.cfg.Incumbent.ReadFile(inference.BackboneFile); err != nil {
			return nil, fmt.Errorf("retune: incumbent backbone: %w", err)
		}
		if headBytes, err = r.retrainHead(ctx); err != nil {
			return nil, err
		}
	}
	pos := m.ClassIndex("parasitized")
	pick := func(v []float64, rows []int) []float64 {
		out := make([]float64, len(rows))
		for k, i := range rows {
			out[k] = v[i]
		}
		return out
	}
	pickInt := func(v []int, rows []int) []int {
		out := make([]int, len(rows))
		for k, i := range rows {
			out[k] = v[i]
		}
		return out
	}
	val := r.snap.Rows(tuning.SplitVal, "")
	r.dec.Threshold = tuning.ChooseThreshold(pick(r.pNew, val), pickInt(r.labels, val), r.prevalence)
	r.dec.Prevalence = r.prevalence
	id := sha256.New()
	fmt.Fprintf(id, "%s\n%s\n%v\n", sha256hex(backbone), sha256hex(headBytes), r.dec.Threshold)
	r.dec.ModelID = hex.EncodeToString(id.Sum(nil))

	// The inputs must still be the snapshot: a folder that changed during
	// a long study would make the card describe data the model never saw.
	samples, err := r.readSamples(pos)
	if err != nil {
		return nil, err
	}
	again, err := tuning.NewSnapshot(samples, tuning.SnapshotOptions{Classes: 2, MinSamples: 1, TestFraction: r.cfg.Snapshot.TestFraction, ValFraction: r.cfg.Snapshot.ValFraction})
	if err != nil || again.Hash != r.snap.Hash {
		got := "unreadable"
		if err == nil {
			got = short(again.Hash)
		}
		reason := fmt.Sprintf("the inputs changed during the run: snapshot %s at the start, %s now; rerun on the new data", short(r.snap.Hash), got)
		return r.refuse(reason, nil)
	}

	version, err := inference.NextVersion(m.Version, r.now(), r.dec.ModelID[:8])
	if err != nil {
		return nil, fmt.Errorf("retune: %w", err)
	}
	if err := r.cfg.Ledger.Seal(tuning.SealedEntry{Snapshot: r.snap.Hash, Model: r.dec.ModelID, Version: version, Out: r.out, At: r.now().UTC()}); err != nil {
		if errors.Is(err, tuning.ErrSealedTestUsed) {
			return r.refuse(err.Error(), err)
		}
		return nil, fmt.Errorf("retune: %w", err)
	}
	test := r.snap.Rows(tuning.SplitTest, "")
	if cand != nil {
		if err := r.score(ctx, cand, test); err != nil {
			return nil, err
		}
	}
	seed := uint64(len(test))
	cmp := tuning.Compare(pick(r.pNew, test), pick(r.pOld, test), pickInt(r.labels, test), r.slidesOf(test), r.dec.Threshold, m.Threshold, r.cfg.BootstrapReps, seed)
	r.dec.Test = &cmp
	r.dec.PerDomain = map[string]tuning.Comparison{}
	for _, d := range r.snap.Domains() {
		rows := r.snap.Rows(tuning.SplitTest, d)
		r.dec.PerDomain[d] = tuning.Compare(pick(r.pNew, rows), pick(r.pOld, rows), pickInt(r.labels, rows), r.slidesOf(rows), r.dec.Threshold, m.Threshold, r.cfg.BootstrapReps, seed)
	}
	plotDir := filepath.Join(r.out, StudyDir, "plots")
	if _, err := tuning.WritePlotComparison(plotDir, pick(r.pNew, test), pick(r.pOld, test), pickInt(r.labels, test), r.dec.Threshold, m.Threshold,
		fmt.Sprintf("%s against %s on the sealed test split", version, m.Version)); err != nil {
		return nil, fmt.Errorf("retune: %w", err)
	}

	var reasons []string
	if d := cmp.AccuracyDiff; !(d.Lo > 0) {
		reasons = append(reasons, fmt.Sprintf("not better than the incumbent on the sealed test: accuracy %+.4f (95%% CI %+.4f to %+.4f) against %s",
			d.Value, d.Lo, d.Hi, m.Version))
	}
	if nom, ok := r.dec.PerDomain[DomainNominal]; ok {
		if drop := nom.Incumbent.Accuracy.Value - nom.New.Accuracy.Value; drop > r.cfg.MaxNominalDrop {
			reasons = append(reasons, fmt.Sprintf("forgets the nominal domain: accuracy on its test slides %.4f against the incumbent's %.4f (allowed drop %.3f)",
				nom.New.Accuracy.Value, nom.Incumbent.Accuracy.Value, r.cfg.MaxNominalDrop))
		}
	}
	if len(reasons) > 0 {
		r.dec.Reasons = reasons
		return r.refuse("", nil)
	}
	if err := r.writeBundle(ctx, version, backbone, headBytes); err != nil {
		return nil, err
	}
	r.dec.Accepted, r.dec.Version = true, version
	if err := r.writeDecision(); err != nil {
		return nil, err
	}
	return r.dec, nil
}

// retrainHead retrains the head study's winner, which must reproduce the
// study's value, and scores every row with it.
func (r *run) retrainHead(ctx context.Context) ([]byte, error) {
	res := r.dec.Study
	s := r.cfg.Study
	cfg, err := tuning.ParseHeadParams(res.Params)
	if err != nil {
		return nil, fmt.Errorf("retune: winner's parameters: %w", err)
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = res.BatchSize
	}
	train, val := r.snap.Rows(tuning.SplitTrain, ""), r.snap.Rows(tuning.SplitVal, "")
	w, o, err := tuning.TrainHead(ctx, r.feats, train, val, cfg, res.Seed, s.Budget.MaxEpochs, s.Objective.Metric)
	if err != nil {
		return nil, fmt.Errorf("retune: retrain the winner: %w", err)
	}
	if o.Value != res.Value {
		// The trainer is deterministic by seed; a different value means
		// the head exported is not the one the study chose.
		return nil, fmt.Errorf("retune: retraining trial %d with seed %d gave %s %v, the study recorded %v", res.Winner, res.Seed, s.Objective.Metric, o.Value, res.Value)
	}
	pos := r.cfg.Incumbent.Manifest.ClassIndex("parasitized")
	head, err := inference.NewHead(w.In, w.Hidden, w.Classes, w.W1, w.B1, w.W2, w.B2)
	if err != nil {
		return nil, fmt.Errorf("retune: %w", err)
	}
	headBytes, err := inference.EncodeSafetensors(map[string]inference.Tensor{
		inference.HeadFC1Weight: inference.F32Tensor([]int{w.Hidden, w.In}, w.W1),
		inference.HeadFC1Bias:   inference.F32Tensor([]int{w.Hidden}, w.B1),
		inference.HeadFC2Weight: inference.F32Tensor([]int{w.Classes, w.Hidden}, w.W2),
		inference.HeadFC2Bias:   inference.F32Tensor([]int{w.Classes}, w.B2),
	}, map[string]string{"snapshot": r.snap.Hash, "trial": fmt.Sprint(res.Winner), "seed": fmt.Sprint(res.Seed)})
	if err != nil {
		return nil, fmt.Errorf("retune: %w", err)
	}
	// The scores are computed by inference.Head itself, the code a device
	// runs, so the test measures exactly what will be deployed.
	r.pNew = make([]float64, r.feats.N())
	probs := make([]float64, w.Classes)
	for i := range r.feats.N() {
		head.Probabilities(r.feats.Row(i), probs)
		r.pNew[i] = probs[pos]
	}
	return headBytes, nil
}

// plausibility calibrates the gate's crop reference on the validation
// and test cells (never trained on; the test split alone is too small for
// the gate's fit and calibration parts), with the new model's scores and
// features: a device refuses a cell unlike those this model was validated
// on, so the domain the retune learned is accepted and noise still is
// not. Too few cells leave the bundle without one, said in the decision
// and the card: the device then checks crop sizes only.
func (r *run) plausibility() *drift.Plausibility {
	rows := append(r.snap.Rows(tuning.SplitVal, ""), r.snap.Rows(tuning.SplitTest, "")...)
	stats, feats, slides, scores := make([][]float64, len(rows)), make([][]float32, len(rows)), make([]string, len(rows)), make([]float64, len(rows))
	for k, i := range rows {
		stats[k], scores[k] = r.appear[i], r.pNew[i]
		feats[k] = r.feats.Row(i)
		if r.newFeat != nil {
			feats[k] = r.newFeat[i]
		}
		s := r.snap.Samples[i]
		slides[k] = s.Domain + ":" + s.Device + "/" + s.Slide
	}
	// 40 % of the slides calibrate (the gate's default is 30 %): a
	// retune's held-out cells are few, and each part needs 200 per
	// predicted class (measured: 904 cells of 36 slides left 186 to
	// calibrate at 30 %).
	pc := drift.PlausibilityConfig{Seed: tuning.HashSeed(r.snap.Hash) ^ 0x7, Holdout: 0.4}
	if old := r.incBase; old != nil && old.Plausibility != nil {
		pc.FalseRejection = old.Plausibility.FalseRejection
	}
	p, err := drift.BuildPlausibility(inference.AppearanceNames, stats, feats, slides, scores, r.dec.Threshold, pc)
	if err != nil {
		r.dec.Warnings = append(r.dec.Warnings, fmt.Sprintf("no plausibility reference for crops (%v): a device serving this bundle refuses only crops under its minimum size; give more labelled slides", err))
		return nil
	}
	return p
}

// fieldPlausibility carries the incumbent's reference for segmented field
// cells over: the test split holds crops, not fields, so a new one cannot
// be calibrated here. Its colour and texture ranges describe the cells,
// not the model, and stay valid; its feature gate measures distances in
// the incumbent backbone's feature space and is kept only when the
// backbone is unchanged.
func (r *run) fieldPlausibility() *drift.Plausibility {
	old := r.incBase
	if old == nil || old.FieldPlausibility == nil {
		return nil
	}
	p := *old.FieldPlausibility
	if r.newFeat == nil {
		return &p
	}
	for _, st := range []**drift.Stratum{&p.Uninfected, &p.Parasitized} {
		if *st == nil {
			continue
		}
		c := **st
		c.Features = nil
		*st = &c
	}
	return &p
}

func sha256hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func (r *run) slidesOf(rows []int) []string {
	out := make([]string, len(rows))
	for k, i := range rows {
		s := r.snap.Samples[i]
		out[k] = s.Device + "\x00" + s.Slide
	}
	return out
}

// refuse records a refusal and returns it wrapping ErrRefused (and cause,
// when there is one).
func (r *run) refuse(reason string, cause error) (*Decision, error) {
	if reason != "" {
		r.dec.Reasons = append(r.dec.Reasons, reason)
	}
	r.dec.Accepted = false
	if r.out != "" {
		if _, err := os.Stat(r.out); err == nil {
			if err := r.writeDecision(); err != nil {
				return nil, err
			}
		}
	}
	err := fmt.Errorf("%w: %s", ErrRefused, joinReasons(r.dec.Reasons))
	if cause != nil {
		err = fmt.Errorf("%w: %w", err, cause)
	}
	return r.dec, err
}

func joinReasons(rs []string) string {
	out := ""
	for i, s := range rs {
		if i > 0 {
			out += "; "
		}
		out += s
	}
	return out
}

func (r *run) writeDecision() error {
	r.dec.At = r.now().UTC()
	j, err := json.MarshalIndent(r.dec, "", "  ")
	if err != nil {
		return fmt.Errorf("retune: decision: %w", err)
	}
	return writeAtomic(filepath.Join(r.out, DecisionFile), j)
}

// writeBundle assembles the new bundle in a temporary folder, seals it,
// verifies it as a device would, and renames it into place.
func (r *run) writeBundle(ctx context.Context, version string, backbone, headBytes []byte) error {
	base, err := r.baseline(ctx, version)
	if err != nil {
		return err
	}
	// As drift.Baseline.Save writes it.
	bj, err := json.MarshalIndent(base, "", " ")
	if err != nil {
		return fmt.Errorf("retune: baseline: %w", err)
	}
	bj = append(bj, '\n')
	card, err := r.card(version, base, sha256hex(backbone))
	if err != nil {
		return err
	}
	tmp := filepath.Join(r.out, BundleDir+".tmp")
	b, err := r.assemble(tmp, version, backbone, headBytes, r.dec.Threshold, map[string][]byte{baselineFile: bj, cardFile: card})
	if err != nil {
		return fmt.Errorf("retune: the new bundle: %w", err)
	}
	clf, err := inference.NewClassifier(b, inference.ClassifierOptions{})
	if err != nil {
		b.Close()
		return fmt.Errorf("retune: the new bundle does not load: %w", err)
	}
	clf.Close()
	r.dec.BundleSHA = b.ManifestSHA256
	b.Close()
	dst := filepath.Join(r.out, BundleDir)
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("retune: %w", err)
	}
	r.dec.Bundle = dst
	return nil
}

// baseline builds the new model's baseline from the sealed test split, as
// `scopewatch baseline` does, with the incumbent's detector configuration.
func (r *run) baseline(ctx context.Context, version string) (*drift.Baseline, error) {
	var cc drift.CalibrationConfig
	var refPrev float64
	if old := r.incBase; old != nil {
		if old.Detector != nil {
			cc = old.Detector.Config()
			// The signals are those the new test split supports; a
			// signal the incumbent lacked is calibrated too.
			cc.Signals = nil
		}
		refPrev = old.ReferencePrevalence
	}
	if cc.ERT == 0 {
		cc = drift.CalibrationConfig{ERT: 5000, Windows: []int{50, 200, 1000}, Sims: 2000}
	}
	if r.cfg.BaselineSims > 0 {
		cc.Sims = r.cfg.BaselineSims
	}
	test := r.snap.Rows(tuning.SplitTest, "")
	scores, labels, feats, focus, slides := make([]float64, len(test)), make([]int, len(test)), make([][]float32, len(test)), make([]float64, len(test)), make([]string, len(test))
	appear := make([][]float64, len(test))
	for k, i := range test {
		scores[k], labels[k], focus[k], appear[k] = r.pNew[i], r.labels[i], r.focus[i], r.appear[i]
		feats[k] = r.feats.Row(i)
		if r.newFeat != nil {
			feats[k] = r.newFeat[i]
		}
		slides[k] = r.snap.Samples[i].Device + "/" + r.snap.Samples[i].Slide
	}
	r.log.Info("retune baseline", "cells", len(test), "sims", cc.Sims)
	bc := drift.BaselineConfig{
		ModelVersion: version, Seed: tuning.HashSeed(r.snap.Hash), ReferencePrevalence: refPrev, Slides: slides, Focus: focus, Detector: cc,
	}
	b, err := drift.BuildBaseline(ctx, scores, labels, feats, r.dec.Threshold, bc)
	if errors.Is(err, drift.ErrTooFewSlides) {
		// Feedback samples are a few cells of many slides: the test split
		// cannot stand for slides sent one at a time. The new baseline mixes
		// slides instead, and says what that costs.
		r.dec.Warnings = append(r.dec.Warnings, fmt.Sprintf("drift detectors calibrated with cells of all slides mixed, not slide by slide (%v): on a device's slide-by-slide stream they alarm more often than every %d cells; rebuild the baseline from whole held-out slides (scopewatch baseline --null-model slides)", err, cc.ERT))
		bc.Detector.Null, bc.Detector.SlideCells = drift.NullExchangeable, [2]int{}
		b, err = drift.BuildBaseline(ctx, scores, labels, feats, r.dec.Threshold, bc)
	}
	if err != nil {
		return nil, fmt.Errorf("retune: baseline: %w", err)
	}
	b.Plausibility = r.plausibility()
	b.FieldPlausibility = r.fieldPlausibility()
	return b, nil
}
