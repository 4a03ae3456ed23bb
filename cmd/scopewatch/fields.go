package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/daemon"
	"github.com/scopewatch/scopewatch/internal/synth"
)

const fieldsUsage = `usage: scopewatch fields [--model DIR] [--threshold T] [--format csv|json] [--keys FILE] [--allow-unsigned] [--ort-lib PATH] PATH...

Segments every field image given (files, or folders searched recursively)
into red cells exactly as the daemon does, classifies each cell, and writes
one record per cell on stdout: slide, image, box, p_parasitized and, when a
FIELD.json truth file (as written by "scopewatch synth fields") sits beside
FIELD.png, the truth label of the matching red cell (IoU >= 0.5; empty when
no truth cell matches). A field's slide is the folder that holds it.

On stderr: per slide the cells counted, the infected cells at the threshold
and the parasitemia, with the truth's when known; then the mean absolute
parasitemia error and the cell-level error rates. Exit status 1 when any
field failed, after all the others were done.

`

// fieldCellRecord is one output row of `scopewatch fields`.
type fieldCellRecord struct {
	Slide        string  `json:"slide"`
	Image        string  `json:"image"`
	X            int     `json:"x"`
	Y            int     `json:"y"`
	W            int     `json:"w"`
	H            int     `json:"h"`
	PParasitized float64 `json:"p_parasitized"`
	Truth        string  `json:"truth,omitempty"`
	// Rejected is the plausibility gate's refusal of the cell ("rejected:
	// ..."); such a cell has no score and is not counted.
	Rejected string `json:"rejected,omitempty"`
}

func runFields(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("fields", stderr)
	fs.Usage = func() { fmt.Fprint(stderr, fieldsUsage); fs.PrintDefaults() }
	threshold := fs.Float64("threshold", 0, "counting threshold on p_parasitized (0: the manifest's)")
	format := fs.String("format", "csv", "output format: csv or json (one object per line)")
	mf := addModelFlags(fs, modelFlagOptions{batch: "cells"})
	paths, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(paths) == 0 {
		return fmt.Errorf("%w: no PATH given (field images or folders of them)", errUsage)
	}
	if *format != "json" && *format != "csv" {
		return fmt.Errorf("%w: --format must be csv or json, got %q", errUsage, *format)
	}
	if *threshold < 0 || *threshold > 1 {
		return fmt.Errorf("%w: --threshold must be within 0..1, got %g", errUsage, *threshold)
	}
	clf, bundle, gate, err := mf.openGated(inference.ClassifierOptions{NoFeatures: true, NoFocus: true}, stderr)
	if err != nil {
		return err
	}
	defer bundle.Close()
	defer clf.Close()
	thr := *threshold
	if thr == 0 {
		thr = clf.Threshold()
	}

	images, err := listFieldImages(paths)
	if err != nil {
		return err
	}
	out := newFieldWriter(stdout, *format)
	sum := newFieldSummary(thr)
	for _, path := range images {
		if err := ctx.Err(); err != nil {
			return err
		}
		slide := filepath.Base(filepath.Dir(path))
		rows, truth, err := analyzeFieldFile(ctx, clf, gate, path, slide)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			fmt.Fprintf(stderr, "%s: %v\n", path, err)
			sum.failed++
			continue
		}
		for _, r := range rows {
			out.write(r)
		}
		sum.add(slide, rows, truth)
	}
	if err := out.flush(); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	sum.print(stderr, clf.Version())
	if sum.failed > 0 {
		return errSomeFailed
	}
	return nil
}

// listFieldImages expands folders into the images under them, sorted, so
// runs are reproducible.
func listFieldImages(paths []string) ([]string, error) {
	var out []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			out = append(out, p)
			continue
		}
		err = filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || strings.HasPrefix(d.Name(), ".") || skippedInFolders[strings.ToLower(filepath.Ext(path))] {
				return nil
			}
			out = append(out, path)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	slices.Sort(out)
	return out, nil
}

// fieldTruth is what a truth file says about a field's red cells.
type fieldTruth struct {
	rbc, parasitized int
	cells            []synth.FieldCell
}

// readFieldTruth reads FIELD.json beside FIELD.png; a missing file is no
// truth, not an error.
func readFieldTruth(imagePath string) (*fieldTruth, error) {
	p := strings.TrimSuffix(imagePath, filepath.Ext(imagePath)) + ".json"
	data, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("truth file: %w", err)
	}
	var ft synth.FieldTruth
	if err := json.Unmarshal(data, &ft); err != nil {
		return nil, fmt.Errorf("truth file %s: %w", p, err)
	}
	t := &fieldTruth{rbc: ft.RBC, parasitized: ft.Parasitized}
	for _, c := range ft.Cells {
		if c.Label != "" {
			t.cells = append(t.cells, c)
		}
	}
	return t, nil
}

func analyzeFieldFile(ctx context.Context, clf *inference.Classifier, gate *daemon.PlausibilityGate, path, slide string) ([]fieldCellRecord, *fieldTruth, error) {
	truth, err := readFieldTruth(path)
	if err != nil {
		return nil, nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	an, err := inference.AnalyzeField(ctx, clf, data, inference.SegmentOptions{})
	if err != nil {
		return nil, nil, err
	}
	rows := make([]fieldCellRecord, len(an.Cells))
	for i, c := range an.Cells {
		rows[i] = fieldCellRecord{
			Slide: slide, Image: filepath.Base(path),
			X: c.Box.Min.X, Y: c.Box.Min.Y, W: c.Box.Dx(), H: c.Box.Dy(),
			PParasitized: c.PParasitized,
		}
		// The daemon's gate on segmented cells (no size check: the
		// segmentation's own area filters bound a cell's size).
		if err := gate.CheckField(c.Appearance, c.Features, c.PParasitized); err != nil {
			rows[i].PParasitized, rows[i].Rejected = 0, err.Error()
		}
		if truth != nil {
			rows[i].Truth = matchTruth(truth.cells, c.Box)
		}
	}
	return rows, truth, nil
}

// matchTruth returns the label of the red truth cell overlapping box best,
// if their IoU reaches 0.5.
func matchTruth(cells []synth.FieldCell, box image.Rectangle) string {
	best, label := 0.0, ""
	for _, c := range cells {
		if v := boxIoU(c.Box(), box); v > best {
			best, label = v, c.Label
		}
	}
	if best < 0.5 {
		return ""
	}
	return label
}

func boxIoU(a, b image.Rectangle) float64 {
	in := a.Intersect(b)
	if in.Empty() {
		return 0
	}
	ia := float64(in.Dx() * in.Dy())
	return ia / (float64(a.Dx()*a.Dy()+b.Dx()*b.Dy()) - ia)
}

type fieldWriter struct {
	format string
	w      io.Writer
	csv    *csv.Writer
	enc    *json.Encoder
	err    error
}

func newFieldWriter(w io.Writer, format string) *fieldWriter {
	fw := &fieldWriter{format: format, w: w}
	if format == "csv" {
		fw.csv = csv.NewWriter(w)
		fw.err = fw.csv.Write([]string{"slide", "image", "x", "y", "w", "h", "p_parasitized", "truth", "rejected"})
	} else {
		fw.enc = json.NewEncoder(w)
	}
	return fw
}

func (fw *fieldWriter) write(r fieldCellRecord) {
	if fw.err != nil {
		return
	}
	if fw.csv != nil {
		p := strconv.FormatFloat(r.PParasitized, 'g', -1, 64)
		if r.Rejected != "" {
			p = ""
		}
		fw.err = fw.csv.Write([]string{r.Slide, r.Image, strconv.Itoa(r.X), strconv.Itoa(r.Y),
			strconv.Itoa(r.W), strconv.Itoa(r.H), p, r.Truth, r.Rejected})
		return
	}
	fw.err = fw.enc.Encode(r)
}

func (fw *fieldWriter) flush() error {
	if fw.csv != nil {
		fw.csv.Flush()
		if fw.err == nil {
			fw.err = fw.csv.Error()
		}
	}
	return fw.err
}

// fieldSummary accumulates per-slide counts at one threshold.
type fieldSummary struct {
	thr    float64
	order  []string
	slides map[string]*slideCount
	failed int
	// rejected counts cells the plausibility gate refused (not counted).
	rejected int
	// Cell-level confusion over cells matched to a truth red cell.
	tp, fn, tn, fp, unmatched int
}

type slideCount struct {
	fields, cells, infected int
	truthRBC, truthPara     int
	truthFields             int
}

func newFieldSummary(thr float64) *fieldSummary {
	return &fieldSummary{thr: thr, slides: map[string]*slideCount{}}
}

func (s *fieldSummary) add(slide string, rows []fieldCellRecord, truth *fieldTruth) {
	sc := s.slides[slide]
	if sc == nil {
		sc = &slideCount{}
		s.slides[slide] = sc
		s.order = append(s.order, slide)
	}
	sc.fields++
	for _, r := range rows {
		if r.Rejected != "" {
			s.rejected++
			continue
		}
		sc.cells++
		pos := r.PParasitized >= s.thr
		if pos {
			sc.infected++
		}
		switch {
		case truth == nil:
		case r.Truth == "":
			s.unmatched++
		case r.Truth == synth.Parasitized.String() && pos:
			s.tp++
		case r.Truth == synth.Parasitized.String():
			s.fn++
		case pos:
			s.fp++
		default:
			s.tn++
		}
	}
	if truth != nil {
		sc.truthFields++
		sc.truthRBC += truth.rbc
		sc.truthPara += truth.parasitized
	}
}

func (s *fieldSummary) print(w io.Writer, version string) {
	fmt.Fprintf(w, "model %s, counting threshold %.6g; %d segmented cells rejected by the plausibility gate (not counted)\n", version, s.thr, s.rejected)
	fmt.Fprintf(w, "%-16s %6s %7s %8s %12s %12s\n", "slide", "fields", "cells", "infected", "parasitemia%", "truth%")
	var absErr float64
	var withTruth int
	for _, id := range s.order {
		sc := s.slides[id]
		pct := 100 * float64(sc.infected) / float64(max(sc.cells, 1))
		truth := "-"
		if sc.truthFields == sc.fields && sc.truthRBC > 0 {
			tp := 100 * float64(sc.truthPara) / float64(sc.truthRBC)
			truth = fmt.Sprintf("%.2f", tp)
			absErr += math.Abs(pct - tp)
			withTruth++
		}
		fmt.Fprintf(w, "%-16s %6d %7d %8d %12.2f %12s\n", id, sc.fields, sc.cells, sc.infected, pct, truth)
	}
	if withTruth > 0 {
		fmt.Fprintf(w, "parasitemia MAE %.3f pp over %d slides\n", absErr/float64(withTruth), withTruth)
		fmt.Fprintf(w, "matched cells: sensitivity %s, false-positive rate %s (TP %d FN %d TN %d FP %d; %d cells matched no truth cell)\n",
			ratio(s.tp, s.tp+s.fn), ratio(s.fp, s.fp+s.tn), s.tp, s.fn, s.tn, s.fp, s.unmatched)
	}
	if s.failed > 0 {
		fmt.Fprintf(w, "%d fields failed\n", s.failed)
	}
}
