package synth

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"image"
	"image/jpeg"
	"image/png"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func pixelsEqual(a, b image.Image) bool {
	ra, rb := toRGBA(a), toRGBA(b)
	return ra.Rect == rb.Rect && bytes.Equal(ra.Pix, rb.Pix)
}

func toRGBA(img image.Image) *image.RGBA {
	if r, ok := img.(*image.RGBA); ok {
		return r
	}
	b := img.Bounds()
	out := image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			out.Set(x-b.Min.X, y-b.Min.Y, img.At(x, y))
		}
	}
	return out
}

func TestCellDeterministic(t *testing.T) {
	for _, i := range []int{0, 7, 123} {
		a := CellAt(42, Knobs{}, 10, i)
		b := CellAt(42, Knobs{}, 10, i)
		if !pixelsEqual(a.Image, b.Image) || a.Label != b.Label || a.Slide != b.Slide {
			t.Fatalf("crop %d differs between two generations with the same seed", i)
		}
		c := CellAt(43, Knobs{}, 10, i)
		if c.Slide == a.Slide {
			t.Errorf("crop %d: seeds 42 and 43 share slide id %q", i, a.Slide)
		}
		if pixelsEqual(a.Image, c.Image) {
			t.Errorf("crop %d: seeds 42 and 43 gave identical pixels", i)
		}
	}
}

func TestStreamMatchesCellAt(t *testing.T) {
	k := Knobs{StainShift: 10}
	st := NewStream(9, k, 4)
	for i := range 10 {
		got := st.Next()
		want := CellAt(9, k, 4, i)
		if got.Index != i || got.Slide != want.Slide || got.Label != want.Label || !pixelsEqual(got.Image, want.Image) {
			t.Fatalf("stream item %d differs from CellAt", i)
		}
	}
}

func TestSlideIDsUniqueAcrossSeeds(t *testing.T) {
	seen := map[string]int64{}
	for _, seed := range []int64{1, 2, 11, 12, 21, 112, 121} {
		for i := range 30 {
			id := SlideID(seed, i)
			if s, dup := seen[id]; dup {
				t.Fatalf("slide id %q produced by seeds %d and %d", id, s, seed)
			}
			seen[id] = seed
		}
	}
}

// readTree returns every file under dir, keyed by relative path.
func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestWriteCellsIdenticalForAnyWorkers(t *testing.T) {
	ctx := context.Background()
	a, b := t.TempDir(), t.TempDir()
	if _, err := WriteCells(ctx, CellsConfig{Dir: a, N: 24, Seed: 5, CellsPerSlide: 8, Workers: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteCells(ctx, CellsConfig{Dir: b, N: 24, Seed: 5, CellsPerSlide: 8, Workers: 4}); err != nil {
		t.Fatal(err)
	}
	ta, tb := readTree(t, a), readTree(t, b)
	if len(ta) != 25 {
		t.Fatalf("wrote %d files, want 24 images + labels.csv", len(ta))
	}
	for p, da := range ta {
		if !bytes.Equal(da, tb[p]) {
			t.Errorf("%s differs between 1 and 4 workers", p)
		}
	}
	c := t.TempDir()
	if _, err := WriteCells(ctx, CellsConfig{Dir: c, N: 24, Seed: 6, CellsPerSlide: 8}); err != nil {
		t.Fatal(err)
	}
	tc := readTree(t, c)
	for p := range tc {
		if _, ok := ta[p]; ok && p != LabelsFile {
			t.Errorf("seed 6 wrote %s, also written by seed 5: slides must differ", p)
		}
	}
}

func TestLabelsCSV(t *testing.T) {
	dir := t.TempDir()
	sum, err := WriteCells(context.Background(), CellsConfig{Dir: dir, N: 30, Seed: 77, CellsPerSlide: 7})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Images != 30 || sum.Slides != 5 {
		t.Errorf("summary %+v, want 30 images from 5 slides", sum)
	}
	f, err := os.Open(filepath.Join(dir, LabelsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(rows[0], ","); got != "path,label,slide" {
		t.Fatalf("header %q, want path,label,slide", got)
	}
	rows = rows[1:]
	if len(rows) != 30 {
		t.Fatalf("%d rows, want 30", len(rows))
	}
	slides := map[string]bool{}
	para := 0
	for i, r := range rows {
		path, label, slide := r[0], r[1], r[2]
		if filepath.IsAbs(path) || !strings.HasPrefix(path, slide+"/") || !strings.HasSuffix(path, ".png") {
			t.Errorf("row %d: path %q should be relative, under its slide %q, .png", i, path, slide)
		}
		l, err := ParseLabel(label)
		if err != nil {
			t.Errorf("row %d: %v", i, err)
		}
		if l == Parasitized {
			para++
		}
		want := CellAt(77, Knobs{}, 7, i)
		if want.Label != l || want.Slide != slide {
			t.Errorf("row %d: label %s slide %s, want %s %s", i, l, slide, want.Label, want.Slide)
		}
		b, err := os.ReadFile(filepath.Join(dir, path))
		if err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
		img, err := png.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("row %d: %s: %v", i, path, err)
		}
		if !pixelsEqual(img, want.Image) {
			t.Errorf("row %d: file differs from the in-memory crop", i)
		}
		slides[slide] = true
	}
	if len(slides) != 5 || para != sum.Parasitized {
		t.Errorf("%d slides, %d parasitized; summary %+v", len(slides), para, sum)
	}
}

func TestCropSizeAndBackground(t *testing.T) {
	for i := range 60 {
		s := CellAt(3, Knobs{}, 20, i)
		b := s.Image.Bounds()
		if b.Dx() != b.Dy() || b.Dx() < 95 || b.Dx() > 180 {
			t.Errorf("crop %d is %dx%d, want square about 100-160", i, b.Dx(), b.Dy())
		}
		// Corners are outside the cell: black, as in the NIH crops.
		img := toRGBA(s.Image)
		for _, p := range []image.Point{{0, 0}, {b.Dx() - 1, 0}, {0, b.Dy() - 1}, {b.Dx() - 1, b.Dy() - 1}} {
			o := img.PixOffset(p.X, p.Y)
			if img.Pix[o] != 0 || img.Pix[o+1] != 0 || img.Pix[o+2] != 0 {
				t.Errorf("crop %d corner %v is not black", i, p)
			}
		}
		// An uninfected cell is pink: red above green in most pixels.
		if s.Label == Uninfected {
			pink, px := 0, cellPixels(s.Image)
			for _, p := range px {
				if p[0] > p[1]+0.1 {
					pink++
				}
			}
			if pink < len(px)*9/10 {
				t.Errorf("crop %d: only %d of %d cell pixels pink", i, pink, len(px))
			}
		}
	}
}

func TestPrevalence(t *testing.T) {
	count := func(k Knobs) int {
		n := 0
		for i := range 400 {
			// The label is the crop's first draw; CellAt agrees (below).
			sl := NewSlide(SlideID(100, i/25), newRand(mixSeed(100, domSlide, uint64(i/25))), k)
			if sl.drawLabel(newRand(mixSeed(100, domCell, uint64(i)))) == Parasitized {
				n++
			}
		}
		return n
	}
	for i := range 5 {
		sl := NewSlide(SlideID(100, 0), newRand(mixSeed(100, domSlide, 0)), Knobs{})
		if got, want := sl.drawLabel(newRand(mixSeed(100, domCell, uint64(i)))), CellAt(100, Knobs{}, 25, i).Label; got != want {
			t.Fatalf("crop %d: label draw %s, CellAt %s", i, got, want)
		}
	}
	// Binomial(400, 0.5): sd 10; 4 sd either side.
	if n := count(Knobs{}); n < 160 || n > 240 {
		t.Errorf("default crop mix: %d/400 parasitized, want about half", n)
	}
	if n := count(Knobs{Prevalence: ZeroPrevalence}); n != 0 {
		t.Errorf("ZeroPrevalence: %d parasitized", n)
	}
	if n := count(Knobs{Prevalence: 1}); n != 400 {
		t.Errorf("prevalence 1: %d/400 parasitized", n)
	}
	if n := count(Knobs{Prevalence: 0.1}); n < 16 || n > 64 {
		t.Errorf("prevalence 0.1: %d/400 parasitized", n)
	}
}

func TestStagesAndMimicsOccur(t *testing.T) {
	stages, mimics := map[string]int{}, map[Label]int{}
	st := NewStream(8, Knobs{}, 50)
	for range 200 {
		s := st.Next()
		if s.Label == Parasitized && s.Info.Stage == "" || s.Label == Uninfected && s.Info.Stage != "" {
			t.Fatalf("crop %d: label %s with stage %q", s.Index, s.Label, s.Info.Stage)
		}
		stages[s.Info.Stage]++
		if len(s.Info.Mimics) > 0 {
			mimics[s.Label]++
		}
	}
	for _, st := range []string{StageRing, StageTrophozoite, StageSchizont, StageGametocyte} {
		if stages[st] == 0 {
			t.Errorf("no %s in 200 crops", st)
		}
	}
	if mimics[Uninfected] < 15 {
		t.Errorf("only %d uninfected crops carry look-alikes", mimics[Uninfected])
	}
}

// cellPixels returns the RGB (0..1) of the crop's non-black pixels.
func cellPixels(img image.Image) [][3]float64 {
	r := toRGBA(img)
	var out [][3]float64
	for i := 0; i < len(r.Pix); i += 4 {
		p := r.Pix[i : i+3]
		if int(p[0])+int(p[1])+int(p[2]) < 30 {
			continue
		}
		out = append(out, [3]float64{float64(p[0]) / 255, float64(p[1]) / 255, float64(p[2]) / 255})
	}
	return out
}

// meanHue is the circular mean hue in degrees of the cell pixels.
func meanHue(img image.Image) float64 {
	var sx, sy float64
	for _, p := range cellPixels(img) {
		h, s, _ := rgbToHSV(p)
		a := h * math.Pi / 180
		sx += s * math.Cos(a)
		sy += s * math.Sin(a)
	}
	return math.Atan2(sy, sx) * 180 / math.Pi
}

func meanLevel(img image.Image) float64 {
	px := cellPixels(img)
	var s float64
	for _, p := range px {
		s += p[0] + p[1] + p[2]
	}
	return s / float64(3*len(px))
}

// hfEnergy is the mean squared Laplacian of the green channel inside the
// cell (away from the black border).
func hfEnergy(img image.Image) float64 {
	r := toRGBA(img)
	b := r.Rect
	var s float64
	n := 0
	g := func(x, y int) float64 { return float64(r.Pix[r.PixOffset(x, y)+1]) }
	for y := b.Dy() / 4; y < 3*b.Dy()/4; y++ {
		for x := b.Dx() / 4; x < 3*b.Dx()/4; x++ {
			l := 4*g(x, y) - g(x-1, y) - g(x+1, y) - g(x, y-1) - g(x, y+1)
			s += l * l
			n++
		}
	}
	return s / float64(n)
}

func TestKnobEffects(t *testing.T) {
	const n = 12
	avg := func(k Knobs, f func(image.Image) float64) float64 {
		var s float64
		for i := range n {
			s += f(CellAt(21, k, 4, i).Image)
		}
		return s / n
	}
	hueDiff := func(a, b float64) float64 { return math.Mod(b-a+540, 360) - 180 }

	h0 := avg(Knobs{}, meanHue)
	if d := hueDiff(h0, avg(Knobs{StainShift: 40}, meanHue)); d < 25 || d > 55 {
		t.Errorf("stain-shift 40 moved mean hue by %.1f degrees", d)
	}
	if d := hueDiff(h0, avg(Knobs{StainShift: -40}, meanHue)); d > -25 || d < -55 {
		t.Errorf("stain-shift -40 moved mean hue by %.1f degrees", d)
	}

	// Sensor noise would dominate the Laplacian; measure blur without it.
	quiet := func(k Knobs) float64 {
		var s float64
		for i := range n {
			sl := NewSlide("q", newRand(int64(i)), k)
			sl.Noise = 0
			img, _ := sl.RenderCell(newRand(int64(1000+i)), Parasitized)
			s += hfEnergy(img)
		}
		return s / n
	}
	if e0, e := quiet(Knobs{}), quiet(Knobs{Blur: 2}); e > e0/2 {
		t.Errorf("blur 2: high-frequency energy %.2f, nominal %.2f; want at most half", e, e0)
	}
	e0 := avg(Knobs{}, hfEnergy)
	if e := avg(Knobs{Blur: 2}, hfEnergy); e >= e0 {
		t.Errorf("blur 2: high-frequency energy %.2f, nominal %.2f; want at most half", e, e0)
	}
	if e := avg(Knobs{Noise: 0.05}, hfEnergy); e < 4*e0 {
		t.Errorf("noise 0.05: high-frequency energy %.2f, nominal %.2f; want far more", e, e0)
	}

	l0 := avg(Knobs{}, meanLevel)
	if l := avg(Knobs{Brightness: 0.1}, meanLevel); l-l0 < 0.07 || l-l0 > 0.11 {
		t.Errorf("brightness 0.1 moved the mean level from %.3f to %.3f", l0, l)
	}
	if l := avg(Knobs{Gamma: 1.5}, meanLevel); l >= l0-0.05 {
		t.Errorf("gamma 1.5: mean level %.3f, nominal %.3f; want darker", l, l0)
	}

	size := func(img image.Image) float64 { return float64(img.Bounds().Dx()) }
	if s0, s1 := avg(Knobs{}, size), avg(Knobs{Magnification: 1.5}, size); s1/s0 < 1.35 || s1/s0 > 1.65 {
		t.Errorf("magnification 1.5: crop side %.1f -> %.1f", s0, s1)
	}

	// JPEG: the in-memory crop carries the artefacts, and differs from the
	// lossless render only slightly.
	j := CellAt(21, Knobs{JPEGQuality: 40}, 4, 0)
	if pixelsEqual(j.Image, j.raw) {
		t.Error("jpeg-quality 40: in-memory crop has no JPEG artefacts")
	}
	if d := math.Abs(meanLevel(j.Image) - meanLevel(j.raw)); d > 0.03 {
		t.Errorf("jpeg-quality 40 moved the mean level by %.3f", d)
	}
}

func TestWriteCellsJPEG(t *testing.T) {
	dir := t.TempDir()
	if _, err := WriteCells(context.Background(), CellsConfig{Dir: dir, N: 3, Seed: 1, Knobs: Knobs{JPEGQuality: 80}}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, SlideID(1, 0), "cell_000000.jpg"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jpeg.Decode(bytes.NewReader(b)); err != nil {
		t.Fatalf("written JPEG does not decode: %v", err)
	}
}

func TestKnobsValidate(t *testing.T) {
	tests := []struct {
		k    Knobs
		want string // "" = valid
	}{
		{Knobs{}, ""},
		{Knobs{StainShift: -180, Blur: 20, Brightness: 1, Gamma: 10, Noise: 1, JPEGQuality: 100, Magnification: 4, Prevalence: 1}, ""},
		{Knobs{Prevalence: ZeroPrevalence}, ""},
		{Knobs{StainShift: 200}, "stain-shift"},
		{Knobs{Blur: -1}, "blur"},
		{Knobs{Brightness: 1.5}, "brightness"},
		{Knobs{Gamma: 0.01}, "gamma"},
		{Knobs{Noise: math.NaN()}, "noise"},
		{Knobs{JPEGQuality: 101}, "jpeg-quality"},
		{Knobs{Magnification: 10}, "magnification"},
		{Knobs{Prevalence: 1.2}, "prevalence"},
		{Knobs{Prevalence: -0.5}, "prevalence"},
	}
	for _, tt := range tests {
		err := tt.k.Validate()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%+v: unexpected error %v", tt.k, err)
		case tt.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.want+":")):
			t.Errorf("%+v: error %v, want one naming %s", tt.k, err, tt.want)
		}
	}
}

// testFields renders a few fields once for all the field tests.
var testFields = sync.OnceValue(func() []testField {
	var out []testField
	for i := range 4 {
		img, tr, slide := FieldAt(31, Knobs{Prevalence: 0.05}, 2, i)
		out = append(out, testField{img, tr, slide})
	}
	return out
})

type testField struct {
	img   *image.RGBA
	tr    FieldTruth
	slide Slide
}

func TestFieldTruth(t *testing.T) {
	for i, f := range testFields() {
		img, tr, slide := f.img, f.tr, f.slide
		b := img.Bounds()
		if b.Dx() != FieldWidth || b.Dy() != FieldHeight {
			t.Fatalf("field %d is %v", i, b)
		}
		if tr.RBC < MinFieldCells || tr.RBC > MaxFieldCells {
			t.Errorf("field %d: %d red cells, want %d..%d", i, tr.RBC, MinFieldCells, MaxFieldCells)
		}
		if tr.Slide != slide.ID || tr.Slide != SlideID(31, i/2) {
			t.Errorf("field %d: slide %q", i, tr.Slide)
		}
		rbc, para, wbc := 0, 0, 0
		for j, c := range tr.Cells {
			if c.ID != j {
				t.Fatalf("field %d: cell %d has id %d", i, j, c.ID)
			}
			if !c.Box().In(b) || c.W < 10 || c.H < 10 {
				t.Errorf("field %d: cell %d box %v not a cell inside the field", i, j, c.Box())
			}
			switch c.Kind {
			case KindRBC:
				rbc++
				if c.Label == Parasitized.String() {
					para++
				} else if c.Label != Uninfected.String() {
					t.Errorf("field %d: red cell %d label %q", i, j, c.Label)
				}
			case KindWBC:
				wbc++
			default:
				t.Errorf("field %d: cell %d kind %q", i, j, c.Kind)
			}
		}
		if rbc != tr.RBC || para != tr.Parasitized || wbc != tr.WBC {
			t.Errorf("field %d: counts %d/%d/%d, truth says %d/%d/%d", i, rbc, para, wbc, tr.RBC, tr.Parasitized, tr.WBC)
		}
		if want := float64(para) / float64(rbc); math.Abs(tr.Parasitemia-want) > 1e-12 {
			t.Errorf("field %d: parasitemia %v, want %v", i, tr.Parasitemia, want)
		}
		checkTouching(t, img, tr)
	}
}

// checkTouching verifies the touching pairs on the image itself: between
// the centres of a touching pair no pixel is as bright as the empty
// background, while distinct close neighbours not listed have background
// between them.
func checkTouching(t *testing.T, img *image.RGBA, tr FieldTruth) {
	t.Helper()
	if len(tr.Touching) < 5 {
		t.Errorf("field %s: only %d touching pairs", tr.Field, len(tr.Touching))
		return
	}
	// Background green level: the 90th percentile of the green channel.
	var hist [256]int
	for i := 1; i < len(img.Pix); i += 4 {
		hist[img.Pix[i]]++
	}
	bg, acc := 0, 0
	for v := 255; v >= 0; v-- {
		acc += hist[v]
		if acc > len(img.Pix)/4/10 {
			bg = v
			break
		}
	}
	thr := 0.94 * float64(bg)
	maxGreen := func(a, b FieldCell) float64 {
		m := 0.0
		for s := 0.0; s <= 1; s += 0.01 {
			x, y := a.CX+(b.CX-a.CX)*s, a.CY+(b.CY-a.CY)*s
			m = math.Max(m, float64(img.Pix[img.PixOffset(int(x), int(y))+1]))
		}
		return m
	}
	listed := map[[2]int]bool{}
	bridged := 0
	for _, p := range tr.Touching {
		a, b := tr.Cells[p[0]], tr.Cells[p[1]]
		listed[p] = true
		if !a.Box().Inset(-1).Overlaps(b.Box()) {
			t.Errorf("field %s: touching pair %v has disjoint boxes", tr.Field, p)
		}
		if maxGreen(a, b) < thr {
			bridged++
		}
	}
	// Outlines can meet off the line between centres, so allow a few.
	if bridged < len(tr.Touching)*9/10 {
		t.Errorf("field %s: only %d of %d touching pairs are joined by cell pixels", tr.Field, bridged, len(tr.Touching))
	}
	gaps, close := 0, 0
	for i, a := range tr.Cells {
		for j := i + 1; j < len(tr.Cells); j++ {
			b := tr.Cells[j]
			d := math.Hypot(a.CX-b.CX, a.CY-b.CY)
			if listed[[2]int{i, j}] || d > 1.6*(a.R+b.R) {
				continue
			}
			close++
			if maxGreen(a, b) >= thr {
				gaps++
			}
		}
	}
	if close > 0 && gaps < close*9/10 {
		t.Errorf("field %s: %d of %d close untouching pairs show background between them", tr.Field, gaps, close)
	}
}

func TestWriteFields(t *testing.T) {
	dir := t.TempDir()
	sum, err := WriteFields(context.Background(), FieldsConfig{Dir: dir, N: 2, Seed: 4, FieldsPerSlide: 1, Knobs: Knobs{Prevalence: ZeroPrevalence}})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Fields != 2 || sum.Slides != 2 || sum.Parasitized != 0 {
		t.Errorf("summary %+v", sum)
	}
	for i := range 2 {
		slide := SlideID(4, i)
		b, err := os.ReadFile(filepath.Join(dir, slide, "field_000.json"))
		if err != nil {
			t.Fatal(err)
		}
		var tr FieldTruth
		if err := json.Unmarshal(b, &tr); err != nil {
			t.Fatal(err)
		}
		if tr.Slide != slide || tr.RBC == 0 || tr.Parasitized != 0 || tr.Width != FieldWidth {
			t.Errorf("truth %s: slide %s rbc %d parasitized %d", slide, tr.Slide, tr.RBC, tr.Parasitized)
		}
		f, err := os.Open(filepath.Join(dir, slide, "field_000.png"))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := png.DecodeConfig(f)
		f.Close()
		if err != nil || cfg.Width != FieldWidth || cfg.Height != FieldHeight {
			t.Errorf("field image %s: %v %dx%d", slide, err, cfg.Width, cfg.Height)
		}
	}
}

func TestFieldsVary(t *testing.T) {
	// White cells appear in some fields, and parasitized slides exist.
	wbc, para := 0, 0
	for _, f := range testFields() {
		tr := f.tr
		wbc += tr.WBC
		para += tr.Parasitized
	}
	if wbc == 0 || para == 0 {
		t.Errorf("%d fields: %d white cells, %d parasitized red cells; want some of each", len(testFields()), wbc, para)
	}
}

// BenchmarkCell renders and encodes one crop, as WriteCells does per image.
func BenchmarkCell(b *testing.B) {
	for i := 0; i < b.N; i++ {
		s := CellAt(1, Knobs{}, 50, i)
		var buf bytes.Buffer
		if err := Encode(&buf, s.raw, Knobs{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkField(b *testing.B) {
	for i := 0; i < b.N; i++ {
		FieldAt(1, Knobs{}, 4, i)
	}
}

func TestFieldMagnification(t *testing.T) {
	_, tr, slide := FieldAt(31, Knobs{Magnification: 1.6}, 2, 0)
	nominal := testFields()[0]
	if tr.RBC >= nominal.tr.RBC*2/3 {
		t.Errorf("magnification 1.6: %d red cells, nominal %d; want far fewer", tr.RBC, nominal.tr.RBC)
	}
	if r := slide.FieldRadius / nominal.slide.FieldRadius; r < 1.55 || r > 1.65 {
		t.Errorf("magnification 1.6: cell radius ratio %.2f", r)
	}
	for _, c := range tr.Cells {
		if !c.Box().In(image.Rect(0, 0, FieldWidth, FieldHeight)) {
			t.Errorf("cell %d box %v outside the field", c.ID, c.Box())
		}
	}
}

// The table and polynomial stand-ins for exp, sin and atan2 stay close to
// the math package: 8-bit output cannot show their error.
func TestFastMath(t *testing.T) {
	for i := range 20000 {
		a := float64(i) / 20000 * 2 * math.Pi
		for _, r := range []float64{0.3, 1, 70} {
			y, x := r*math.Sin(a), r*math.Cos(a)
			d := math.Abs(fastAtan2(y, x) - math.Atan2(y, x))
			if d > math.Pi {
				d = 2*math.Pi - d
			}
			if d > 1e-5 {
				t.Fatalf("fastAtan2(%v, %v) off by %g", y, x, d)
			}
		}
		if x := float64(i)*0.013 - 130; math.Abs(fastSin(x)-math.Sin(x)) > 1e-4 {
			t.Fatalf("fastSin(%v) = %v, want %v", x, fastSin(x), math.Sin(x))
		}
		if x := float32(i) * 0.0006; math.Abs(float64(expNeg(x))-math.Exp(-float64(x))) > 1e-5 {
			t.Fatalf("expNeg(%v) = %v", x, expNeg(x))
		}
	}
	h := randHarmonics(newRand(1), 2, 5, 0.3)
	tb := h.table()
	for i := range 1000 {
		th := -math.Pi + 2*math.Pi*float64(i)/1000
		if d := math.Abs(tb.at(th) - h.at(th)); d > 1e-3 {
			t.Fatalf("outline table at %v off by %g", th, d)
		}
	}
	// The gaussian table has unit variance.
	rng := newRand(3)
	var s, s2 float64
	for range 200000 {
		g := gauss(rng)
		s += g
		s2 += g * g
	}
	if m, v := s/200000, s2/200000; math.Abs(m) > 0.01 || math.Abs(v-1) > 0.02 {
		t.Errorf("gauss: mean %v variance %v", m, v)
	}
}
