package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/scopewatch/scopewatch/drift"
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/labelset"
)

const classifyUsage = `usage: scopewatch classify [--model DIR] [--format json|csv] [--batch N] [--keys FILE] [--allow-unsigned] [--ort-lib PATH] PATH...

Classifies every image given, and every file under the folders given
(recursively; *.csv such as labels.csv, *.json and *.reason files are skipped, anything else
is tried as an image whatever its extension). One record per image on stdout;
a summary on stderr, with accuracy, sensitivity, specificity and AUC when a
folder holds a labels.csv (path,label,slide). Each record carries the crop's
focus (variance of the Laplacian inside the cell at the model's input size;
lower is blurrier), which drift replay/eval read from the CSV. Images the
daemon's plausibility gate would refuse (too small, colour or texture unlike
a red cell, features far from nominal cells) get no class: their record
carries "rejected" with the reason instead. Exit status 1 when any image
failed (a refusal is not a failure), after all the others were classified.

`

// skippedInFolders are files that sit beside images in dataset folders
// (ground truth, quarantine reasons) and are not images.
var skippedInFolders = map[string]bool{".json": true, ".reason": true, ".csv": true}

func runClassify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("classify", stderr)
	fs.Usage = func() { fmt.Fprint(stderr, classifyUsage); fs.PrintDefaults() }
	format := fs.String("format", "json", "output format: json (one object per line) or csv")
	mf := addModelFlags(fs, modelFlagOptions{batch: "images", sessions: true})
	paths, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(paths) == 0 {
		return fmt.Errorf("%w: no PATH given (files or folders of images)", errUsage)
	}
	if *format != "json" && *format != "csv" {
		return fmt.Errorf("%w: --format must be json or csv, got %q", errUsage, *format)
	}
	clf, bundle, gate, err := mf.openGated(inference.ClassifierOptions{NoFeatures: true}, stderr)
	if err != nil {
		return err
	}
	defer bundle.Close()
	defer clf.Close()

	inputs, truth, listErrs := collectInputs(paths)
	out := newRecordWriter(stdout, *format, clf.Version())
	sum := newClassifySummary(truth)
	for _, e := range listErrs {
		out.write(inference.Result{Path: e.path, Err: e.err})
		sum.add(inference.Result{Path: e.path, Err: e.err})
	}

	var bar *progressbar.ProgressBar
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) && len(inputs) > 0 {
		bar = progressbar.NewOptions(len(inputs),
			progressbar.OptionSetWriter(stderr),
			progressbar.OptionSetDescription("classifying"),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("img"),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish())
	}
	start := time.Now()
	err = clf.Stream(ctx, len(inputs), func(i int) inference.Input {
		return inference.Input{Path: inputs[i]}
	}, func(r inference.Result) {
		// The daemon's gate: what it would refuse gets no class here either.
		if r.Err == nil {
			if rerr := gate.Judge(r); rerr != nil {
				r = inference.Result{Index: r.Index, Path: r.Path, Err: rerr}
			}
		}
		out.write(r)
		sum.add(r)
		if bar != nil {
			bar.Add(1)
		}
	})
	elapsed := time.Since(start)
	if bar != nil {
		bar.Finish()
	}
	if ferr := out.flush(); ferr != nil && err == nil {
		err = fmt.Errorf("write results: %w", ferr)
	}
	sum.print(stderr, elapsed, clf)
	if err != nil {
		return err
	}
	if sum.failed > 0 {
		return errSomeFailed
	}
	return nil
}

type listError struct {
	path string
	err  error
}

// collectInputs expands the command line into image paths (files as given,
// folders walked recursively in lexical order) and loads the ground truth of
// every labels.csv found in a folder, keyed by cleaned image path.
func collectInputs(paths []string) (inputs []string, truth map[string]bool, errs []listError) {
	truth = map[string]bool{}
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			errs = append(errs, listError{p, err})
			continue
		}
		if !st.IsDir() {
			inputs = append(inputs, p)
			continue
		}
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				errs = append(errs, listError{path, err})
				if d != nil && d.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if d.IsDir() {
				return nil
			}
			name := d.Name()
			if name == "labels.csv" {
				if err := readLabels(path, truth); err != nil {
					errs = append(errs, listError{path, err})
				}
				return nil
			}
			if skippedInFolders[strings.ToLower(filepath.Ext(name))] || strings.HasPrefix(name, ".") {
				return nil
			}
			inputs = append(inputs, path)
			return nil
		})
		if err != nil {
			errs = append(errs, listError{p, err})
		}
	}
	return inputs, truth, errs
}

// readLabels reads a labels.csv (header path,label,slide; paths relative to
// the file's folder) into truth: true for parasitized.
func readLabels(path string, truth map[string]bool) error {
	rows, _, err := labelset.ReadCSV(path)
	if err != nil {
		return err
	}
	for _, r := range rows {
		truth[r.Path] = r.Positive
	}
	return nil
}

// recordWriter prints one record per image.
type recordWriter struct {
	w       *bufio.Writer
	csv     *csv.Writer
	json    *json.Encoder
	version string
	err     error
}

type jsonRecord struct {
	Path         string   `json:"path"`
	Label        string   `json:"label,omitempty"`
	PParasitized *float64 `json:"p_parasitized,omitempty"`
	Focus        *float64 `json:"focus,omitempty"`
	Model        string   `json:"model,omitempty"`
	Error        string   `json:"error,omitempty"`
	// Rejected is the plausibility gate's refusal ("rejected: ..."): the
	// image got no class.
	Rejected string `json:"rejected,omitempty"`
}

func newRecordWriter(w io.Writer, format, version string) *recordWriter {
	rw := &recordWriter{w: bufio.NewWriter(w), version: version}
	if format == "csv" {
		rw.csv = csv.NewWriter(rw.w)
		rw.err = rw.csv.Write([]string{"path", "label", "p_parasitized", "model", "error", "focus", "rejected"})
	} else {
		rw.json = json.NewEncoder(rw.w)
	}
	return rw
}

func (rw *recordWriter) write(r inference.Result) {
	if rw.err != nil {
		return
	}
	if rw.csv != nil {
		rec := []string{r.Path, "", "", "", "", "", ""}
		switch {
		case errors.Is(r.Err, drift.ErrImplausible):
			rec[6] = r.Err.Error()
		case r.Err != nil:
			rec[4] = r.Err.Error()
		default:
			// Full precision: these scores feed drift replay/eval, where
			// rounding collapses scores saturated near 0 and 1 into ties
			// the baseline does not have.
			rec[1], rec[2], rec[3] = r.Label, strconv.FormatFloat(r.PParasitized, 'g', -1, 64), rw.version
			rec[5] = strconv.FormatFloat(r.Focus, 'g', -1, 64)
		}
		rw.err = rw.csv.Write(rec)
		return
	}
	rec := jsonRecord{Path: r.Path}
	switch {
	case errors.Is(r.Err, drift.ErrImplausible):
		rec.Rejected = r.Err.Error()
	case r.Err != nil:
		rec.Error = r.Err.Error()
	default:
		p, f := r.PParasitized, r.Focus
		rec.Label, rec.PParasitized, rec.Focus, rec.Model = r.Label, &p, &f, rw.version
	}
	rw.err = rw.json.Encode(rec)
}

func (rw *recordWriter) flush() error {
	if rw.csv != nil {
		rw.csv.Flush()
		if err := rw.csv.Error(); err != nil && rw.err == nil {
			rw.err = err
		}
	}
	if err := rw.w.Flush(); err != nil && rw.err == nil {
		rw.err = err
	}
	return rw.err
}

// classifySummary accumulates counts and, for labelled images, the scores
// needed for accuracy, sensitivity, specificity and AUC.
type classifySummary struct {
	truth      map[string]bool
	ok, failed int
	byReason   map[string]int
	// rejected counts images the plausibility gate refused, by check.
	rejected  int
	byCheck   map[string]int
	positives int
	scores    []labelledScore
	labelled  int
	tp, fn    int
	tn, fp    int
	unmatched int // classified images without a labels.csv row
}

type labelledScore struct {
	p   float64
	pos bool
}

func newClassifySummary(truth map[string]bool) *classifySummary {
	return &classifySummary{truth: truth, byReason: map[string]int{}, byCheck: map[string]int{}}
}

func (s *classifySummary) add(r inference.Result) {
	if errors.Is(r.Err, drift.ErrImplausible) {
		s.rejected++
		check := "size"
		if rf, ok := errors.AsType[*drift.Refusal](r.Err); ok {
			check = rf.Check
		}
		s.byCheck[check]++
		return
	}
	if r.Err != nil {
		s.failed++
		s.byReason[failureKind(r.Err)]++
		return
	}
	s.ok++
	pred := r.Label == inference.PositiveClass
	if pred {
		s.positives++
	}
	if len(s.truth) == 0 {
		return
	}
	pos, ok := s.truth[filepath.Clean(r.Path)]
	if !ok {
		s.unmatched++
		return
	}
	s.labelled++
	s.scores = append(s.scores, labelledScore{r.PParasitized, pos})
	switch {
	case pos && pred:
		s.tp++
	case pos && !pred:
		s.fn++
	case !pos && pred:
		s.fp++
	default:
		s.tn++
	}
}

// failureKind names an error's class for the summary.
func failureKind(err error) string {
	var ie *inference.ImageError
	if errors.As(err, &ie) {
		return ie.Kind.Error()
	}
	if errors.Is(err, fs.ErrNotExist) {
		return "not found"
	}
	if errors.Is(err, fs.ErrPermission) {
		return "permission denied"
	}
	return "other"
}

func (s *classifySummary) print(w io.Writer, elapsed time.Duration, clf *inference.Classifier) {
	total := s.ok + s.failed + s.rejected
	rate := 0.0
	if elapsed > 0 {
		rate = float64(s.ok) / elapsed.Seconds()
	}
	fmt.Fprintf(w, "classified %d of %d images in %.2fs (%.1f images/s), model %s, threshold %.4g: %d parasitized, %d uninfected, %d failed, %d rejected as implausible\n",
		s.ok, total, elapsed.Seconds(), rate, clf.Version(), clf.Threshold(), s.positives, s.ok-s.positives, s.failed, s.rejected)
	if s.rejected > 0 {
		checks := make([]string, 0, len(s.byCheck))
		for k := range s.byCheck {
			checks = append(checks, k)
		}
		sort.Strings(checks)
		for i, k := range checks {
			checks[i] = fmt.Sprintf("%s %d", k, s.byCheck[k])
		}
		fmt.Fprintf(w, "rejected (no class), by the check that failed: %s\n", strings.Join(checks, ", "))
	}
	if s.failed > 0 {
		kinds := make([]string, 0, len(s.byReason))
		for k := range s.byReason {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		parts := make([]string, len(kinds))
		for i, k := range kinds {
			parts[i] = fmt.Sprintf("%s %d", k, s.byReason[k])
		}
		fmt.Fprintf(w, "failures: %s (details in the records)\n", strings.Join(parts, ", "))
	}
	if s.labelled == 0 {
		if len(s.truth) > 0 {
			fmt.Fprintf(w, "labels.csv found but none of its %d rows matched a classified image\n", len(s.truth))
		}
		return
	}
	acc := float64(s.tp+s.tn) / float64(s.labelled)
	fmt.Fprintf(w, "against labels.csv (%d images: %d parasitized, %d uninfected): accuracy %.4f, sensitivity %s, specificity %s, AUC %s\n",
		s.labelled, s.tp+s.fn, s.tn+s.fp, acc, ratio(s.tp, s.tp+s.fn), ratio(s.tn, s.tn+s.fp), aucString(s.scores))
	fmt.Fprintf(w, "confusion: TP %d FN %d TN %d FP %d", s.tp, s.fn, s.tn, s.fp)
	if s.unmatched > 0 {
		fmt.Fprintf(w, "; %d classified images had no labels.csv row", s.unmatched)
	}
	fmt.Fprintln(w)
}

func ratio(num, den int) string {
	if den == 0 {
		return "n/a"
	}
	return strconv.FormatFloat(float64(num)/float64(den), 'f', 4, 64)
}

func aucString(s []labelledScore) string {
	auc, ok := rocAUC(s)
	if !ok {
		return "n/a (needs both classes)"
	}
	return strconv.FormatFloat(auc, 'f', 4, 64)
}

// rocAUC is the Mann-Whitney estimate of the area under the ROC curve:
// the probability that a random positive scores above a random negative,
// ties counting one half.
func rocAUC(s []labelledScore) (float64, bool) {
	sorted := append([]labelledScore(nil), s...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].p < sorted[j].p })
	var npos, nneg float64
	var rankSum float64
	for i := 0; i < len(sorted); {
		j := i
		for j < len(sorted) && sorted[j].p == sorted[i].p {
			j++
		}
		// Tied scores share the mean of ranks i+1..j.
		mid := float64(i+1+j) / 2
		for k := i; k < j; k++ {
			if sorted[k].pos {
				rankSum += mid
				npos++
			} else {
				nneg++
			}
		}
		i = j
	}
	if npos == 0 || nneg == 0 {
		return 0, false
	}
	return (rankSum - npos*(npos+1)/2) / (npos * nneg), true
}
