package inference

import (
	"context"
	"errors"
	"image"
	"math"
	"math/rand"
	"sort"
	"testing"

	"gocv.io/x/gocv"

	"github.com/scopewatch/scopewatch/internal/synth"
)

// segField renders synthetic field i of seed as a BGR Mat with its truth.
func segField(t testing.TB, seed int64, k synth.Knobs, i int) (gocv.Mat, synth.FieldTruth) {
	t.Helper()
	img, tr, _ := synth.FieldAt(seed, k, 1, i)
	m, err := gocv.ImageToMatRGB(img)
	if err != nil {
		t.Fatal(err)
	}
	return m, tr
}

func iou(a, b image.Rectangle) float64 {
	in := a.Intersect(b)
	if in.Empty() {
		return 0
	}
	ia := float64(in.Dx() * in.Dy())
	return ia / (float64(a.Dx()*a.Dy()+b.Dx()*b.Dy()) - ia)
}

// segScore matches detections to truth red cells one-to-one (greedy on
// IoU >= 0.5) and scores them.
type segScore struct {
	truth, found, matched int
	pairs, pairsSplit     int
	wbc, wbcAsRBC         int
}

func scoreSegmentation(tr synth.FieldTruth, cells []SegmentedCell) segScore {
	type cand struct {
		t, d int
		v    float64
	}
	var cs []cand
	for ti, c := range tr.Cells {
		for di, d := range cells {
			if v := iou(c.Box(), d.Box); v >= 0.5 {
				cs = append(cs, cand{ti, di, v})
			}
		}
	}
	sort.Slice(cs, func(a, b int) bool { return cs[a].v > cs[b].v })
	t2d := map[int]int{}
	usedD := map[int]bool{}
	for _, c := range cs {
		if _, ok := t2d[c.t]; ok || usedD[c.d] {
			continue
		}
		t2d[c.t] = c.d
		usedD[c.d] = true
	}
	var s segScore
	s.found = len(cells)
	for ti, c := range tr.Cells {
		_, ok := t2d[ti]
		switch c.Kind {
		case synth.KindRBC:
			s.truth++
			if ok {
				s.matched++
			}
		case synth.KindWBC:
			s.wbc++
			if ok {
				s.wbcAsRBC++
			}
		}
	}
	for _, p := range tr.Touching {
		a, b := tr.Cells[p[0]], tr.Cells[p[1]]
		if a.Kind != synth.KindRBC || b.Kind != synth.KindRBC {
			continue
		}
		s.pairs++
		da, oka := t2d[p[0]]
		db, okb := t2d[p[1]]
		if oka && okb && da != db {
			s.pairsSplit++
		}
	}
	return s
}

func (s *segScore) add(o segScore) {
	s.truth += o.truth
	s.found += o.found
	s.matched += o.matched
	s.pairs += o.pairs
	s.pairsSplit += o.pairsSplit
	s.wbc += o.wbc
	s.wbcAsRBC += o.wbcAsRBC
}

// Synthetic fields from slides never tuned on: recall and precision of
// red cells at IoU >= 0.5 and the share of touching pairs split.
func TestSegmentFieldAccuracy(t *testing.T) {
	var total segScore
	for i := range 4 {
		m, tr := segField(t, 9100, synth.Knobs{Prevalence: 0.05}, i)
		seg, err := SegmentField(m, SegmentOptions{})
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		s := scoreSegmentation(tr, seg.Cells)
		t.Logf("field %d (%s): %d red cells, %d found, %d matched, %d/%d touching pairs split, %d white cells (%d as red), r=%.1f",
			i, tr.Slide, s.truth, s.found, s.matched, s.pairsSplit, s.pairs, s.wbc, s.wbcAsRBC, seg.CellRadius)
		total.add(s)
	}
	recall := float64(total.matched) / float64(total.truth)
	precision := float64(total.matched) / float64(total.found)
	split := float64(total.pairsSplit) / float64(total.pairs)
	t.Logf("recall %.4f precision %.4f touching pairs split %.4f (%d pairs)", recall, precision, split, total.pairs)
	if recall < 0.95 {
		t.Errorf("recall %.4f < 0.95", recall)
	}
	if precision < 0.95 {
		t.Errorf("precision %.4f < 0.95", precision)
	}
	if split < 0.9 {
		t.Errorf("touching pairs split %.4f < 0.90", split)
	}
	if total.wbcAsRBC > 0 {
		t.Errorf("%d of %d white cells reported as red cells", total.wbcAsRBC, total.wbc)
	}
}

func TestSegmentFieldCrop(t *testing.T) {
	m, tr := segField(t, 9200, synth.Knobs{}, 0)
	defer m.Close()
	seg, err := SegmentField(m, SegmentOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(seg.Cells) < tr.RBC*9/10 {
		t.Fatalf("%d cells found of %d", len(seg.Cells), tr.RBC)
	}
	for i := range min(len(seg.Cells), 40) {
		c, err := seg.Crop(m, i)
		if err != nil {
			t.Fatal(err)
		}
		if c.Rows() != c.Cols() || c.Rows() < seg.Cells[i].Box.Dx() || c.Type() != gocv.MatTypeCV8UC3 {
			t.Errorf("crop %d: %dx%d type %d for box %v", i, c.Cols(), c.Rows(), c.Type(), seg.Cells[i].Box)
		}
		// Corners are outside the cell: black, like the training crops;
		// the centre is the cell.
		n := c.Rows() - 1
		for _, p := range [][2]int{{0, 0}, {0, n}, {n, 0}, {n, n}} {
			if v := c.GetVecbAt(p[0], p[1]); v[0]+v[1]+v[2] != 0 {
				t.Errorf("crop %d corner %v is %v, want black", i, p, v)
			}
		}
		if v := c.GetVecbAt(n/2, n/2); int(v[0])+int(v[1])+int(v[2]) < 100 {
			t.Errorf("crop %d centre %v is not a cell", i, v)
		}
		c.Close()
	}
	if _, err := seg.Crop(m, len(seg.Cells)); err == nil {
		t.Error("crop out of range: no error")
	}
}

func TestSegmentFieldRejectsBadInput(t *testing.T) {
	empty := gocv.NewMat()
	defer empty.Close()
	grey := gocv.NewMatWithSize(100, 100, gocv.MatTypeCV8UC1)
	defer grey.Close()
	tiny := gocv.NewMatWithSize(8, 8, gocv.MatTypeCV8UC3)
	defer tiny.Close()
	for name, m := range map[string]gocv.Mat{"empty": empty, "grey": grey, "tiny": tiny} {
		if _, err := SegmentField(m, SegmentOptions{}); !errors.Is(err, ErrNotField) {
			t.Errorf("%s: error %v, want ErrNotField", name, err)
		}
	}
	// An empty slide has no cells.
	blank := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(230, 230, 230, 0), 200, 300, gocv.MatTypeCV8UC3)
	defer blank.Close()
	seg, err := SegmentField(blank, SegmentOptions{})
	if err != nil || len(seg.Cells) != 0 {
		t.Errorf("blank field: %v cells, err %v", len(seg.Cells), err)
	}
}

// BenchmarkSegmentField segments one 1920x1080 field of about 300 cells.
func BenchmarkSegmentField(b *testing.B) {
	// A slide dense enough for ~300 red cells of the typical size.
	slide := synth.NewSlide("bench", rand.New(rand.NewSource(9300)), synth.Knobs{Prevalence: 0.05})
	slide.Density, slide.FieldRadius = 0.6, 26
	img, tr := slide.RenderField(rand.New(rand.NewSource(9301)), "field_000")
	m, err := gocv.ImageToMatRGB(img)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("field with %d red cells", tr.RBC)
	defer m.Close()
	b.ResetTimer()
	for range b.N {
		if _, err := SegmentField(m, SegmentOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSegmentAccuracy measures segmentation quality on b.N fresh
// synthetic fields (seed 9400, one field per slide) and reports recall,
// precision, the share of touching pairs split and white cells leaked, as
// metrics, nominal and under drift knobs. Run with -benchtime 20x or more.
func BenchmarkSegmentAccuracy(b *testing.B) {
	for _, tc := range []struct {
		name string
		k    synth.Knobs
	}{
		{"nominal", synth.Knobs{Prevalence: 0.05}},
		{"blur2", synth.Knobs{Prevalence: 0.05, Blur: 2}},
		{"noise0.03", synth.Knobs{Prevalence: 0.05, Noise: 0.03}},
		{"stain+30", synth.Knobs{Prevalence: 0.05, StainShift: 30}},
		{"dim", synth.Knobs{Prevalence: 0.05, Brightness: -0.15, Gamma: 1.3}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var total segScore
			var white, whiteFound int
			for i := range b.N {
				b.StopTimer()
				m, tr := segField(b, 9400, tc.k, i)
				b.StartTimer()
				seg, err := SegmentField(m, SegmentOptions{})
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				total.add(scoreSegmentation(tr, seg.Cells))
				for _, c := range tr.Cells {
					if c.Kind != synth.KindWBC {
						continue
					}
					white++
					for _, wb := range seg.WhiteCells {
						if iou(c.Box(), wb) >= 0.5 {
							whiteFound++
							break
						}
					}
				}
				m.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(total.matched)/float64(total.truth), "recall")
			b.ReportMetric(float64(total.matched)/float64(total.found), "precision")
			b.ReportMetric(float64(total.pairsSplit)/float64(max(total.pairs, 1)), "pairs_split")
			b.ReportMetric(float64(total.truth)/float64(b.N), "rbc/field")
			b.ReportMetric(float64(total.wbcAsRBC), "wbc_as_rbc")
			b.ReportMetric(float64(whiteFound)/float64(max(white, 1)), "wbc_found")
		})
	}
}

// White cells are found and kept out of the red cells. Fields 4, 5, 6 and
// 8 of seed 9500 hold one white cell each.
func TestSegmentFieldWhiteCells(t *testing.T) {
	kinds := map[string]bool{}
	for _, i := range []int{4, 5, 6, 8} {
		m, tr := segField(t, 9500, synth.Knobs{Prevalence: 0.05}, i)
		seg, err := SegmentField(m, SegmentOptions{})
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		if s := scoreSegmentation(tr, seg.Cells); s.wbcAsRBC > 0 {
			t.Errorf("field %d: %d white cells reported as red cells", i, s.wbcAsRBC)
		}
		n := 0
		for _, c := range tr.Cells {
			if c.Kind != synth.KindWBC {
				continue
			}
			n++
			kinds[c.Stage] = true
			found := false
			for _, b := range seg.WhiteCells {
				found = found || iou(c.Box(), b) >= 0.5
			}
			if !found {
				t.Errorf("field %d: %s at %v not found among white cells %v", i, c.Stage, c.Box(), seg.WhiteCells)
			}
		}
		if n == 0 {
			t.Fatalf("field %d of seed 9500 has no white cell; the synthetic fields changed, pick others", i)
		}
		if len(seg.WhiteCells) > n {
			t.Errorf("field %d: %d white cells found, truth has %d", i, len(seg.WhiteCells), n)
		}
	}
	t.Logf("white-cell types seen: %v", kinds)
}

// Cells cut by the image border are dropped unless KeepBorder is set.
func TestSegmentFieldBorder(t *testing.T) {
	m, _ := segField(t, 9100, synth.Knobs{}, 0)
	defer m.Close()
	// A window that cuts through many cells.
	reg := m.Region(image.Rect(333, 211, 1333, 811))
	win := reg.Clone()
	reg.Close()
	defer win.Close()
	inner := image.Rect(0, 0, win.Cols(), win.Rows()).Inset(1)
	seg, err := SegmentField(win, SegmentOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range seg.Cells {
		if !c.Box.In(inner) {
			t.Errorf("cell %v touches the border", c.Box)
		}
	}
	keep, err := SegmentField(win, SegmentOptions{KeepBorder: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(keep.Cells) < len(seg.Cells)+5 {
		t.Errorf("KeepBorder: %d cells, without: %d; want the cut cells too", len(keep.Cells), len(seg.Cells))
	}
}

// Heavily parasitized fields: schizonts and gametocytes are dark, but no
// parasitized red cell may be taken for a white cell or lost.
func TestSegmentFieldKeepsParasitizedCells(t *testing.T) {
	para, kept := 0, 0
	stages := map[string]int{}
	for i := range 2 {
		m, tr := segField(t, 9700, synth.Knobs{Prevalence: 0.6}, i)
		seg, err := SegmentField(m, SegmentOptions{})
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(seg.WhiteCells) > tr.WBC {
			t.Errorf("field %d: %d white cells found, truth has %d", i, len(seg.WhiteCells), tr.WBC)
		}
		for _, c := range tr.Cells {
			if c.Label != synth.Parasitized.String() {
				continue
			}
			para++
			for _, d := range seg.Cells {
				if iou(c.Box(), d.Box) >= 0.5 {
					kept++
					stages[c.Stage]++
					break
				}
			}
		}
	}
	t.Logf("%d of %d parasitized cells found; by stage %v", kept, para, stages)
	if kept < para*97/100 {
		t.Errorf("only %d of %d parasitized cells found", kept, para)
	}
}

// BenchmarkFieldParasitemia runs the whole field path (segment, crop,
// classify with the shipped default bundle) on b.N fresh synthetic fields
// (seed 120000, one per slide) and reports the per-field parasitemia error
// against the truth at the manifest's threshold and at 0.5, the cell-level
// sensitivity and specificity at the manifest's threshold, and the time
// per field. It skips when the bundle or ONNX Runtime is missing.
func BenchmarkFieldParasitemia(b *testing.B) {
	if _, err := InitORT(""); err != nil {
		b.Skipf("ONNX Runtime: %v", err)
	}
	bundle, err := OpenBundle("../models/default", BundleOptions{AllowUnsigned: true})
	if err != nil {
		b.Skipf("default bundle: %v", err)
	}
	defer bundle.Close()
	c, err := NewClassifier(bundle, ClassifierOptions{NoFeatures: true})
	if err != nil {
		b.Fatal(err)
	}
	thr := c.Threshold()
	var errThr, err05 float64
	var tp, fn, tn, fp int
	for i := range b.N {
		b.StopTimer()
		m, tr := segField(b, 120000, synth.Knobs{}, i)
		b.StartTimer()
		seg, err := SegmentField(m, SegmentOptions{})
		if err != nil {
			b.Fatal(err)
		}
		probs := make([]float64, len(seg.Cells))
		crops := make([]gocv.Mat, len(seg.Cells))
		err = c.Stream(context.Background(), len(seg.Cells), func(k int) Input {
			crops[k], _ = seg.Crop(m, k)
			return Input{Mat: &crops[k]}
		}, func(r Result) { probs[r.Index] = r.PParasitized })
		b.StopTimer()
		for k := range crops {
			crops[k].Close()
		}
		m.Close()
		if err != nil {
			b.Fatal(err)
		}
		nThr, n05 := 0, 0
		for k, d := range seg.Cells {
			if probs[k] >= thr {
				nThr++
			}
			if probs[k] >= 0.5 {
				n05++
			}
			best, label := 0.0, ""
			for _, tc := range tr.Cells {
				if v := iou(tc.Box(), d.Box); v > best {
					best, label = v, tc.Label
				}
			}
			if best < 0.5 {
				continue
			}
			pos := probs[k] >= thr
			switch {
			case label == synth.Parasitized.String() && pos:
				tp++
			case label == synth.Parasitized.String():
				fn++
			case pos:
				fp++
			default:
				tn++
			}
		}
		n := float64(max(len(seg.Cells), 1))
		errThr += math.Abs(float64(nThr)/n - tr.Parasitemia)
		err05 += math.Abs(float64(n05)/n - tr.Parasitemia)
		b.StartTimer()
	}
	b.ReportMetric(100*errThr/float64(b.N), "mae_pp")
	b.ReportMetric(100*err05/float64(b.N), "mae_pp@0.5")
	b.ReportMetric(float64(tp)/float64(max(tp+fn, 1)), "sens")
	b.ReportMetric(float64(tn)/float64(max(tn+fp, 1)), "spec")
}

// Small cells (low magnification) take the full-resolution distance
// transform, whose mask is the foreground mask itself.
func TestSegmentFieldSmallCells(t *testing.T) {
	var total segScore
	for i := range 2 {
		m, tr := segField(t, 9150, synth.Knobs{Magnification: 0.45}, i)
		seg, err := SegmentField(m, SegmentOptions{})
		if err != nil {
			m.Close()
			t.Fatal(err)
		}
		if seg.CellRadius >= 16 {
			t.Fatalf("cell radius %.1f: not the full-resolution path this test is for", seg.CellRadius)
		}
		for i := range min(len(seg.Cells), 10) {
			c, err := seg.Crop(m, i)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
		m.Close()
		total.add(scoreSegmentation(tr, seg.Cells))
	}
	recall := float64(total.matched) / float64(total.truth)
	precision := float64(total.matched) / float64(total.found)
	t.Logf("recall %.4f precision %.4f over %d red cells", recall, precision, total.truth)
	if recall < 0.9 || precision < 0.9 {
		t.Errorf("recall %.4f precision %.4f, want >= 0.9", recall, precision)
	}
}

// Segment ids stored in 32 bits (more segments than 16 bits hold) give
// the same crops as the usual 16-bit ids.
func TestSegmentationWideIDs(t *testing.T) {
	m, _ := segField(t, 9200, synth.Knobs{}, 1)
	defer m.Close()
	seg, err := SegmentField(m, SegmentOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if seg.seg16 == nil || seg.seg32 != nil {
		t.Fatal("a field of a few hundred cells should use 16-bit segment ids")
	}
	wide := *seg
	wide.seg16, wide.seg32 = nil, make([]int32, len(seg.seg16))
	for i, v := range seg.seg16 {
		wide.seg32[i] = int32(v)
	}
	for i := range min(len(seg.Cells), 30) {
		a, err := seg.Crop(m, i)
		if err != nil {
			t.Fatal(err)
		}
		b, err := wide.Crop(m, i)
		if err != nil {
			t.Fatal(err)
		}
		if a.Rows() != b.Rows() || string(a.ToBytes()) != string(b.ToBytes()) {
			t.Errorf("cell %d: crops differ between 16- and 32-bit ids", i)
		}
		a.Close()
		b.Close()
	}
}
