package main

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/scopewatch/scopewatch/drift"
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/labelset"
)

// cellScorer is what the baseline needs from a classifier: p(parasitized),
// the backbone features and the focus of each image, the model's decision
// threshold and version.
type cellScorer interface {
	Score(ctx context.Context, paths []string) ([]scoredCell, error)
	Threshold() float64
	Version() string
}

// scoredCell is one test image's outcome (Err set when it failed).
type scoredCell struct {
	P          float64
	Features   []float32
	Focus      float64
	Appearance []float64 // in inference.AppearanceNames order
	Err        error
}

// classifierScorer adapts the inference classifier to cellScorer.
type classifierScorer struct{ c *inference.Classifier }

var _ cellScorer = classifierScorer{}

func (s classifierScorer) Threshold() float64 { return s.c.Threshold() }
func (s classifierScorer) Version() string    { return s.c.Version() }

func (s classifierScorer) Score(ctx context.Context, paths []string) ([]scoredCell, error) {
	out := make([]scoredCell, len(paths))
	err := s.c.Stream(ctx, len(paths), func(i int) inference.Input { return inference.Input{Path: paths[i]} }, func(r inference.Result) {
		out[r.Index] = scoredCell{P: r.PParasitized, Features: r.Features, Focus: r.Focus, Appearance: r.Appearance.Values(), Err: r.Err}
	})
	return out, err
}

func runBaseline(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("baseline", stderr)
	mf := addModelFlags(fs, modelFlagOptions{modelHelp: "model bundle folder, or .tar with -out or -score-only (required)"})
	data := fs.String("data", "", "held-out test set: a folder with labels.csv (path,label,slide) and the images (required)")
	keyPath := fs.String("key", "", "private key to re-seal the bundle after adding baseline.json (from bundle keygen)")
	out := fs.String("out", "", "write the baseline here instead of into the bundle (the bundle is left untouched)")
	csvOut := fs.String("csv", "", "also write the test set's scores, labels, slides, focus and features as CSV (input for drift replay/eval)")
	ert := fs.Int("ert", 5000, "expected run time without drift of the alarm tier, in scores")
	warnERT := fs.Int("warn-ert", 0, "expected run time of the warn tier (0: ert/10)")
	windows := fs.String("windows", "50,200,1000", "comma-separated detector window sizes")
	sims := fs.Int("sims", 2000, "simulated drift-free streams for the threshold calibration")
	null := fs.String("null-model", drift.NullExchangeable, "null model of the calibration: exchangeable (cells of all slides mixed), bootstrap, or slides (streams sent slide by slide; needs whole slides: at least 20 slides of 50 or more cells)")
	slideCells := fs.String("slide-cells", "", "MIN,MAX cells per simulated slide of the slides null model (empty: each reference slide's own count, so make the test set of slides as long as the device's)")
	noEmbed := fs.Bool("no-embedding", false, "do not use the embedding signal")
	noFocus := fs.Bool("no-focus", false, "do not record the focus reference (no focus signal)")
	scoreOnly := fs.Bool("score-only", false, "only classify the folder and write -csv (full-precision scores, truth, slide, focus, features): drift-free or shifted pools for drift eval")
	refPrev := fs.Float64("reference-prevalence", 0, "draw the drift reference with this parasitized fraction (e.g. 0.05 for field slides when the test set is balanced crops); 0: as the test set")
	seed := fs.Uint64("seed", 1, "seed of the bootstrap, projection and calibration")
	noPlaus := fs.Bool("no-plausibility", false, "do not add the plausibility reference (the daemon then checks only crop sizes)")
	plausOut := fs.String("plausibility-out", "", "write only the plausibility reference, as its own file pinned to this bundle's manifest (for a bundle that cannot be re-sealed; the daemon reads MODEL.plausibility.json), and leave the bundle untouched")
	fieldsDir := fs.String("fields", "", "nominal whole fields (a folder of slide folders, as `synth fields` writes) for the plausibility reference of segmented field cells; without it field cells go unchecked")
	plausFrom := fs.String("plausibility-from", "", "take the plausibility references from this plausibility file (as -plausibility-out writes, for this bundle) instead of calibrating them: re-sealing a bundle whose gate was made beside it folds the gate into the signed baseline")
	falseRej := fs.Float64("false-rejection", 0.005, "target share of nominal test cells the plausibility gate refuses (half on colour and texture statistics, half on the feature distance)")
	maxRef := fs.Int("max-reference", 5000, "test-set rows kept as the drift reference (a larger reference keeps a baseline's drift-free run length closer to the ERT; memory and baseline.json grow with it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if mf.model == "" || *data == "" {
		return fmt.Errorf("%w: -model and -data are required", errUsage)
	}
	if *scoreOnly && *csvOut == "" {
		return fmt.Errorf("%w: -score-only needs -csv", errUsage)
	}
	if *plausOut != "" && (*scoreOnly || *out != "" || *noPlaus) {
		return fmt.Errorf("%w: -plausibility-out writes only the plausibility reference; it does not combine with -score-only, -out or -no-plausibility", errUsage)
	}
	if *plausFrom != "" && (*scoreOnly || *noPlaus || *plausOut != "" || *fieldsDir != "") {
		return fmt.Errorf("%w: -plausibility-from takes both references from its file; it does not combine with -score-only, -no-plausibility, -plausibility-out or -fields", errUsage)
	}
	if *out == "" && *keyPath == "" && !*scoreOnly && *plausOut == "" {
		return fmt.Errorf("%w: writing into the bundle changes its hashes: pass -key KEY to re-seal it, or -out FILE to write the baseline elsewhere", errUsage)
	}
	var slideRange [2]int
	if *slideCells != "" {
		r, err := parseSlideCells("slide-cells", *slideCells)
		if err != nil {
			return err
		}
		slideRange = r
	}
	var ws []int
	for _, f := range strings.Split(*windows, ",") {
		w, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("%w: -windows %q: want comma-separated integers", errUsage, *windows)
		}
		ws = append(ws, w)
	}
	paths, labels, slides, err := readTestLabels(*data)
	if err != nil {
		return err
	}
	// Refused before the model is loaded: a missing -model is left to
	// mf.open, which says what is wrong with it.
	if st, err := os.Stat(mf.model); err == nil && !st.IsDir() && *out == "" && !*scoreOnly && *plausOut == "" {
		return fmt.Errorf("%w: -model %s is an archive; baseline writes into a bundle folder (or use -out)", errUsage, mf.model)
	}
	clf, bundle, err := mf.open(inference.ClassifierOptions{})
	if err != nil {
		return err
	}
	defer bundle.Close()
	defer clf.Close()
	fmt.Fprintf(stderr, "scopewatch baseline: classifying %d test images...\n", len(paths))
	var sc cellScorer = classifierScorer{clf}
	cells, err := sc.Score(ctx, paths)
	if err != nil {
		return err
	}
	var keepS, keepFoc []float64
	var keepF [][]float32
	var keepA [][]float64
	var keepL []int
	var keepSl []string
	var failed int
	for i, c := range cells {
		if c.Err != nil {
			failed++
			fmt.Fprintf(stderr, "scopewatch baseline: %s: %v\n", paths[i], c.Err)
			continue
		}
		keepS, keepF, keepFoc, keepL = append(keepS, c.P), append(keepF, c.Features), append(keepFoc, c.Focus), append(keepL, labels[i])
		keepA = append(keepA, c.Appearance)
		if slides != nil {
			keepSl = append(keepSl, slides[i])
		}
	}
	if failed*100 > len(paths) {
		return fmt.Errorf("%d of %d test images failed to classify; a baseline from the rest would not describe the test set", failed, len(paths))
	}
	if len(keepS) == 0 {
		return fmt.Errorf("no test image could be classified")
	}
	plausFeat := keepF
	if plausFeat[0] == nil {
		plausFeat = nil
	}
	if *noEmbed || keepF[0] == nil {
		keepF = nil
	}
	var fieldRef *drift.Plausibility
	if *fieldsDir != "" && !*noPlaus && !*scoreOnly {
		if fieldRef, err = buildFieldPlausibility(ctx, clf, *fieldsDir, *falseRej, *seed, stderr); err != nil {
			return err
		}
	}
	if *plausOut != "" {
		if slides == nil {
			return fmt.Errorf("%s/labels.csv has no slide column: the plausibility reference is calibrated on slides it was not fitted on", *data)
		}
		p, err := drift.BuildPlausibility(inference.AppearanceNames, keepA, plausFeat, keepSl, keepS, sc.Threshold(), drift.PlausibilityConfig{FalseRejection: *falseRej, Seed: *seed})
		if err != nil {
			return err
		}
		f := &drift.PlausibilityFile{Schema: drift.PlausibilitySchema, ModelVersion: sc.Version(), ModelIdentity: bundle.ManifestSHA256, Plausibility: p, Field: fieldRef}
		if err := f.Save(*plausOut); err != nil {
			return err
		}
		printPlausibility(stdout, "crops", p)
		if fieldRef != nil {
			printPlausibility(stdout, "field cells", fieldRef)
		}
		fmt.Fprintf(stdout, "wrote %s for bundle %s (manifest sha256 %s); the bundle is unchanged\n", *plausOut, bundle.Dir, bundle.ManifestSHA256)
		return nil
	}
	if *noFocus {
		keepFoc = nil
	}
	if *scoreOnly {
		if err := writeScoresCSV(*csvOut, keepS, keepL, keepSl, keepFoc, keepF, keepA); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s: %d cells (%d failed)\n", *csvOut, len(keepS), failed)
		return nil
	}
	fmt.Fprintf(stderr, "scopewatch baseline: building the baseline and calibrating the detectors (%d simulated streams)...\n", *sims)
	bc := drift.BaselineConfig{
		ModelVersion: sc.Version(), Seed: *seed, ReferencePrevalence: *refPrev, Slides: keepSl, Focus: keepFoc, MaxReference: *maxRef,
		Detector: drift.CalibrationConfig{ERT: *ert, WarnERT: *warnERT, Windows: ws, Sims: *sims, Null: *null, SlideCells: slideRange},
	}
	var plausFile *drift.PlausibilityFile
	if *plausFrom != "" {
		if plausFile, err = readPlausibilityFile(*plausFrom, sc.Version(), bundle.ManifestSHA256); err != nil {
			return err
		}
	}
	if !*noPlaus && plausFile == nil {
		if slides == nil {
			return fmt.Errorf("%s/labels.csv has no slide column: the plausibility reference is calibrated on slides it was not fitted on (or pass -no-plausibility)", *data)
		}
		// The gate uses the features even when the embedding signal is off.
		bc.Appearance, bc.AppearanceNames, bc.PlausibilityFeatures = keepA, inference.AppearanceNames, plausFeat
		bc.Plausibility = drift.PlausibilityConfig{FalseRejection: *falseRej}
	} else if slides != nil {
		// The slide quality gate reads the same statistics, by slide.
		bc.Appearance, bc.AppearanceNames, bc.NoPlausibility = keepA, inference.AppearanceNames, true
	}
	b, err := drift.BuildBaseline(ctx, keepS, keepL, keepF, sc.Threshold(), bc)
	if err != nil {
		return err
	}
	b.FieldPlausibility = fieldRef
	if plausFile != nil {
		b.Plausibility, b.FieldPlausibility, fieldRef = plausFile.Plausibility, plausFile.Field, plausFile.Field
	}
	if b.Plausibility != nil {
		printPlausibility(stdout, "crops", b.Plausibility)
	}
	if fieldRef != nil {
		printPlausibility(stdout, "field cells", fieldRef)
	}
	if q := b.SlideQuality; q != nil {
		var names []string
		for _, c := range q.Checks {
			names = append(names, c.Name)
		}
		fmt.Fprintf(stdout, "slide quality gate: %d slides, %d cells; checks %s; target %.2g%% of nominal slides flagged, %.1f%% of the reference slides flagged leaving each out\n",
			q.Slides, q.Cells, strings.Join(names, ", "), 100*q.FalseFlag, 100*q.ReferenceFlagged)
	} else if slides != nil {
		fmt.Fprintf(stdout, "slide quality gate: none (it needs at least 20 slides of %d or more cells)\n", drift.MinQualityCells)
	}
	if *csvOut != "" {
		if err := writeScoresCSV(*csvOut, keepS, keepL, keepSl, keepFoc, keepF, keepA); err != nil {
			return err
		}
	}
	m := b.Metrics
	fmt.Fprintf(stdout, "test set: %d cells (%d failed), %d parasitized\n", m.N, failed, m.Positives)
	for _, r := range []struct {
		n string
		v drift.Interval
	}{{"accuracy", m.Accuracy}, {"sensitivity", m.Sensitivity}, {"specificity", m.Specificity}, {"AUC", m.AUC}} {
		fmt.Fprintf(stdout, "  %-12s %.4f  (95%% CI %.4f-%.4f)\n", r.n, r.v.Value, r.v.Lo, r.v.Hi)
	}
	fmt.Fprintf(stdout, "  ECE raw %.4f, isotonic (cv) %.4f: calibration map %s\n", b.ECE.Raw, b.ECE.Isotonic, map[bool]string{true: "kept", false: "not kept"}[b.ECE.Kept])
	if *out != "" {
		if err := b.Save(*out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s\n", *out)
		return nil
	}
	return writeBaselineIntoBundle(bundle.Dir, b, *keyPath, stdout)
}

// readPlausibilityFile reads a plausibility file and checks it was made
// for this model (version and manifest).
func readPlausibilityFile(path, version, manifestSHA string) (*drift.PlausibilityFile, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("-plausibility-from: %w", err)
	}
	defer fh.Close()
	f, err := drift.DecodePlausibilityFile(fh)
	if err != nil {
		return nil, fmt.Errorf("-plausibility-from %s: %w", path, err)
	}
	if f.ModelVersion != version || f.ModelIdentity != manifestSHA {
		return nil, fmt.Errorf("-plausibility-from %s: made for model %s (manifest %.12s), not for this bundle's %s (manifest %.12s)", path, f.ModelVersion, f.ModelIdentity, version, manifestSHA)
	}
	return f, nil
}

// printPlausibility summarises a plausibility reference.
func printPlausibility(w io.Writer, what string, p *drift.Plausibility) {
	fmt.Fprintf(w, "plausibility reference (%s): %d cells, target false rejection %.4g per predicted class (split at p = %.4g), refused on the calibration slides %.4g\n",
		what, p.Cells(), p.FalseRejection, p.Threshold, p.CalibrationRejected())
	for _, st := range []struct {
		name string
		s    *drift.Stratum
	}{{"predicted uninfected", p.Uninfected}, {"predicted parasitized", p.Parasitized}} {
		fmt.Fprintf(w, " %s: %d cells from %d slides, refused on the calibration slides %.4g\n", st.name, st.s.Cells, st.s.Slides, st.s.CalibrationRejected)
		for _, r := range st.s.Stats {
			fmt.Fprintf(w, "  %-16s %.4g .. %.4g\n", r.Name, r.Lo, r.Hi)
		}
		if f := st.s.Features; f != nil {
			fmt.Fprintf(w, "  %-16s <= %.4g (%d-d, shrinkage %.3g)\n", drift.FeatureDistance, f.Threshold, f.Dim, f.Shrinkage)
		}
	}
}

// buildFieldPlausibility segments every field under dir as the daemon does
// and calibrates the field-cell reference on the cells, by slide (the
// name of each field's folder).
func buildFieldPlausibility(ctx context.Context, clf *inference.Classifier, dir string, falseRej float64, seed uint64, stderr io.Writer) (*drift.Plausibility, error) {
	images, err := listFieldImages([]string{dir})
	if err != nil {
		return nil, fmt.Errorf("-fields: %w", err)
	}
	fmt.Fprintf(stderr, "scopewatch baseline: segmenting %d nominal fields for the field-cell plausibility reference...\n", len(images))
	var stats [][]float64
	var feats [][]float32
	var slides []string
	var scores []float64
	for _, path := range images {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("-fields: %w", err)
		}
		an, err := inference.AnalyzeField(ctx, clf, data, inference.SegmentOptions{})
		if err != nil {
			return nil, fmt.Errorf("-fields: %s: %w", path, err)
		}
		slide := filepath.Base(filepath.Dir(path))
		for _, c := range an.Cells {
			stats, feats, slides = append(stats, c.Appearance.Values()), append(feats, c.Features), append(slides, slide)
			scores = append(scores, c.PParasitized)
		}
	}
	if len(feats) > 0 && feats[0] == nil {
		feats = nil
	}
	p, err := drift.BuildPlausibility(inference.AppearanceNames, stats, feats, slides, scores, clf.Threshold(), drift.PlausibilityConfig{FalseRejection: falseRej, Seed: seed})
	if err != nil {
		return nil, fmt.Errorf("-fields %s: %w", dir, err)
	}
	return p, nil
}

// writeBaselineIntoBundle saves baseline.json into dir, names it in the
// manifest and re-seals the bundle (file hashes and signature).
func writeBaselineIntoBundle(dir string, b *drift.Baseline, keyPath string, stdout io.Writer) error {
	priv, err := inference.LoadPrivateKey(keyPath)
	if err != nil {
		return err
	}
	const name = "baseline.json"
	if err := b.Save(filepath.Join(dir, name)); err != nil {
		return err
	}
	mpath := filepath.Join(dir, inference.ManifestFile)
	raw, err := os.ReadFile(mpath)
	if err != nil {
		return fmt.Errorf("read manifest: %w", err)
	}
	man, err := inference.ParseManifest(raw)
	if err != nil {
		return err
	}
	if man.Baseline != name {
		man.Baseline = name
		j, err := inference.MarshalManifest(man)
		if err != nil {
			return err
		}
		if err := os.WriteFile(mpath, j, 0o644); err != nil {
			return fmt.Errorf("write manifest: %w", err)
		}
	}
	if _, err := inference.SealBundle(dir, priv); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s and re-sealed %s\n", filepath.Join(dir, name), dir)
	return nil
}

// readTestLabels reads DIR/labels.csv (header path,label,slide; label
// parasitized or uninfected, or 1/0; slide optional).
func readTestLabels(dir string) ([]string, []int, []string, error) {
	p := filepath.Join(dir, "labels.csv")
	rows, hasSlide, err := labelset.ReadCSV(p)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("test set labels: %w", err)
	}
	if len(rows) == 0 {
		return nil, nil, nil, fmt.Errorf("%s: no images listed", p)
	}
	paths, labels := make([]string, len(rows)), make([]int, len(rows))
	var slides []string
	if hasSlide {
		slides = make([]string, len(rows))
	}
	for i, r := range rows {
		paths[i] = r.Path
		if r.Positive {
			labels[i] = 1
		}
		if hasSlide {
			slides[i] = r.Slide
		}
	}
	return paths, labels, slides, nil
}

// writeScoresCSV writes p_parasitized, truth, slide, focus (when given) and
// f0..fN for drift replay/eval, scores at full precision (rounding would tie
// scores near 1 that the baseline keeps apart). Appearance values (the
// plausibility gate's statistics) go in columns a_NAME, which drift's CSV
// reader ignores, for slide-level analyses of colour and light.
func writeScoresCSV(path string, scores []float64, labels []int, slides []string, focus []float64, feats [][]float32, appear [][]float64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	head := []string{"p_parasitized", "truth", "slide"}
	if focus != nil {
		head = append(head, "focus")
	}
	if len(appear) != len(scores) || len(appear) == 0 || len(appear[0]) != len(inference.AppearanceNames) {
		appear = nil
	}
	if appear != nil {
		for _, n := range inference.AppearanceNames {
			head = append(head, "a_"+n)
		}
	}
	if feats != nil {
		for j := range feats[0] {
			head = append(head, "f"+strconv.Itoa(j))
		}
	}
	_ = w.Write(head)
	rec := make([]string, 0, len(head))
	for i, s := range scores {
		sl := ""
		if slides != nil {
			sl = slides[i]
		}
		rec = append(rec[:0], strconv.FormatFloat(s, 'g', -1, 64), strconv.Itoa(labels[i]), sl)
		if focus != nil {
			rec = append(rec, strconv.FormatFloat(focus[i], 'g', -1, 64))
		}
		if appear != nil {
			for _, v := range appear[i] {
				rec = append(rec, strconv.FormatFloat(v, 'g', -1, 64))
			}
		}
		if feats != nil {
			for _, v := range feats[i] {
				rec = append(rec, strconv.FormatFloat(float64(v), 'g', -1, 32))
			}
		}
		_ = w.Write(rec)
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}
