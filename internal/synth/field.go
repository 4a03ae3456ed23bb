package synth

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"math"
	"math/rand"
	"os"
	"path/filepath"
)

// Field geometry.
const (
	FieldWidth            = 1920
	FieldHeight           = 1080
	MinFieldCells         = 150
	MaxFieldCells         = 400
	DefaultFieldsPerSlide = 4

	// touchFraction of the red cells are placed against a neighbour
	// (touching or overlapping up to about a sixth of their diameter).
	touchFraction = 0.1
	// packing bounds the fraction of the field the cells' outer discs may
	// cover; random placement cannot fill much more than this.
	packing = 0.45
)

// Cell kinds in FieldTruth.
const (
	KindRBC = "rbc"
	KindWBC = "wbc"
)

// FieldCell is one cell of a field's ground truth. The box is the cell's
// whole extent (pixels at least half covered), even where a neighbour
// overlaps it.
type FieldCell struct {
	ID    int    `json:"id"`
	X     int    `json:"x"`
	Y     int    `json:"y"`
	W     int    `json:"w"`
	H     int    `json:"h"`
	Kind  string `json:"kind"`
	Label string `json:"label,omitempty"` // rbc only: parasitized|uninfected
	Stage string `json:"stage,omitempty"` // parasite stage, or white-cell type
	// Mimics lists look-alikes drawn on a red cell.
	Mimics []string `json:"mimics,omitempty"`
	// CX, CY and R are the centre and mean radius in pixels.
	CX float64 `json:"cx"`
	CY float64 `json:"cy"`
	R  float64 `json:"r"`
}

// Box returns the cell's bounding box.
func (c FieldCell) Box() image.Rectangle { return image.Rect(c.X, c.Y, c.X+c.W, c.Y+c.H) }

// FieldTruth is the ground truth of one field.
type FieldTruth struct {
	Slide  string      `json:"slide"`
	Field  string      `json:"field"`
	Width  int         `json:"width"`
	Height int         `json:"height"`
	Cells  []FieldCell `json:"cells"`
	// Touching lists pairs of cell ids whose outlines touch or overlap.
	Touching [][2]int `json:"touching"`
	// RBC and Parasitized count red cells; Parasitemia is their ratio in
	// this field (0..1) and SlideParasitemia the slide's expected ratio.
	RBC              int     `json:"rbc"`
	Parasitized      int     `json:"parasitized"`
	WBC              int     `json:"wbc"`
	Parasitemia      float64 `json:"parasitemia"`
	SlideParasitemia float64 `json:"slide_parasitemia"`
	Knobs            Knobs   `json:"knobs"`
}

type placed struct {
	g    cellGeom
	clip *patch
	ext  float64
}

// Field draws one 1920x1080 thin-smear field of this slide. It carries
// JPEG artefacts when the knobs ask for JPEG.
func (s *Slide) Field(rng *rand.Rand, name string) (image.Image, FieldTruth) {
	img, t := s.RenderField(rng, name)
	return s.finish(img), t
}

// RenderField draws one field losslessly and returns its truth.
func (s *Slide) RenderField(rng *rand.Rand, name string) (*image.RGBA, FieldTruth) {
	c := newCanvas(FieldWidth, FieldHeight)
	t := FieldTruth{Slide: s.ID, Field: name, Width: FieldWidth, Height: FieldHeight,
		SlideParasitemia: s.Parasitemia, Knobs: s.Knobs, Touching: [][2]int{}}
	r := s.FieldRadius
	outer := r*1.12 + 1.5 // a typical cell's reach, gap included
	nmax := int(packing * FieldWidth * FieldHeight / (math.Pi * outer * outer))
	// Density sets the count; a higher magnification leaves fewer cells in
	// view, and no field is packed beyond what random placement can reach.
	m := s.Knobs.mag()
	target := int((MinFieldCells + s.Density*float64(MaxFieldCells-MinFieldCells)*(0.9+0.2*rng.Float64())) / (m * m))
	target = min(target, nmax, MaxFieldCells)
	target = max(target, 1)

	grid := newGrid(FieldWidth, FieldHeight, 4*outer)
	var cells []placed
	fits := func(x, y, ext float64, except int) bool {
		if x-ext < 2 || y-ext < 2 || x+ext > FieldWidth-2 || y+ext > FieldHeight-2 {
			return false
		}
		ok := true
		grid.near(x, y, func(j int) {
			if j == except || !ok {
				return
			}
			o := &cells[j]
			if math.Hypot(o.g.cx-x, o.g.cy-y) < ext+o.ext+3 {
				ok = false
			}
		})
		return ok
	}

	// White cells first: a few per field at most.
	nWBC := 0
	switch u := rng.Float64(); {
	case u < 0.3:
		nWBC = 1
	case u < 0.4:
		nWBC = 2
	}
	for range nWBC {
		kind := "neutrophil"
		wr := r * (1.45 + 0.25*rng.Float64())
		if rng.Float64() < 0.4 {
			kind = "lymphocyte"
			wr = r * (1.05 + 0.2*rng.Float64())
		}
		for range 200 {
			x, y := rng.Float64()*FieldWidth, rng.Float64()*FieldHeight
			ext := wr*1.12 + 1
			if !fits(x, y, ext, -1) {
				continue
			}
			g, clip := s.drawWBC(c, rng, x, y, wr, kind)
			t.Cells = append(t.Cells, fieldCell(len(t.Cells), KindWBC, "", kind, nil, &g, clip))
			grid.add(len(cells), x, y)
			cells = append(cells, placed{g: g, clip: clip, ext: ext})
			t.WBC++
			break
		}
	}

	cr := cellRenderer{s: s, c: c, rng: rng}
	misses := 0
	for t.RBC < target && misses < 4000 {
		ri := r * (1 + 0.07*rng.NormFloat64())
		ext := ri*1.25 + 1 // bound for elongation and irregularity
		var x, y float64
		ok := false
		if len(cells) > 0 && rng.Float64() < touchFraction {
			// Against a random red neighbour, overlapping a little.
			j := rng.Intn(len(cells))
			if t.Cells[j].Kind == KindRBC {
				o := &cells[j]
				d := (ri + o.g.r) * (0.82 + 0.16*rng.Float64())
				a := rng.Float64() * 2 * math.Pi
				x, y = o.g.cx+d*math.Cos(a), o.g.cy+d*math.Sin(a)
				ok = fits(x, y, ext, j)
			}
		} else {
			x, y = rng.Float64()*FieldWidth, rng.Float64()*FieldHeight
			ok = fits(x, y, ext, -1)
		}
		if !ok {
			misses++
			continue
		}
		label := Uninfected
		if rng.Float64() < s.Parasitemia {
			label = Parasitized
		}
		g, clip, info := cr.draw(x, y, ri, label)
		t.Cells = append(t.Cells, fieldCell(len(t.Cells), KindRBC, label.String(), info.Stage, info.Mimics, &g, clip))
		grid.add(len(cells), x, y)
		cells = append(cells, placed{g: g, clip: clip, ext: g.extent() + 1})
		t.RBC++
		if label == Parasitized {
			t.Parasitized++
		}
	}
	if t.RBC > 0 {
		t.Parasitemia = float64(t.Parasitized) / float64(t.RBC)
	}

	// Free platelets between the cells.
	for range rng.Intn(25) {
		x, y := rng.Float64()*FieldWidth, rng.Float64()*FieldHeight
		pr := math.Max(r*(0.08+0.06*rng.Float64()), 2)
		c.blob(nil, x, y, pr, randHarmonics(rng, 2, 4, 0.25), 0, s.pal.platelet, 0.8+0.3*rng.Float64())
		c.disc(nil, x, y, pr*0.4, s.pal.granule, 0.6)
	}

	// Touching pairs, from the drawn outlines.
	for i := range cells {
		grid.near(cells[i].g.cx, cells[i].g.cy, func(j int) {
			if j <= i {
				return
			}
			if math.Hypot(cells[i].g.cx-cells[j].g.cx, cells[i].g.cy-cells[j].g.cy) > cells[i].ext+cells[j].ext+2 {
				return
			}
			if touching(cells[i].clip, cells[j].clip) {
				t.Touching = append(t.Touching, [2]int{i, j})
			}
		})
	}
	img := s.develop(c, rng, nil)
	return img, t
}

func fieldCell(id int, kind, label, stage string, mimics []string, g *cellGeom, clip *patch) FieldCell {
	b := clip.box()
	return FieldCell{ID: id, X: b.Min.X, Y: b.Min.Y, W: b.Dx(), H: b.Dy(), Kind: kind, Label: label,
		Stage: stage, Mimics: mimics, CX: round2(g.cx), CY: round2(g.cy), R: round2(g.r)}
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }

// touching reports whether a half-covered pixel of a is within one pixel
// (8-neighbourhood) of a half-covered pixel of b.
func touching(a, b *patch) bool {
	r := a.r.Intersect(b.r.Inset(-1))
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			if a.at(x, y) < 0.5 {
				continue
			}
			for dy := -1; dy <= 1; dy++ {
				for dx := -1; dx <= 1; dx++ {
					if b.at(x+dx, y+dy) >= 0.5 {
						return true
					}
				}
			}
		}
	}
	return false
}

// drawWBC draws a white cell: pale cytoplasm and a dark purple nucleus,
// lobed for a neutrophil, round and large for a lymphocyte.
func (s *Slide) drawWBC(c *canvas, rng *rand.Rand, x, y, r float64, kind string) (cellGeom, *patch) {
	g := newCellGeom(rng, x, y, r, 0.05*rng.Float64())
	g.h = randHarmonics(rng, 2, 4, 0.04)
	g.pallor, g.rim = 0, 0
	cyto := s.pal.neutroCyto
	if kind == "lymphocyte" {
		cyto = s.pal.lymphCyto
	}
	clip := g.draw(c, cyto, rng)
	if kind == "lymphocyte" {
		nx, ny := g.randInside(rng, 0, 0.1)
		c.blob(clip, nx, ny, r*(0.72+0.1*rng.Float64()), randHarmonics(rng, 2, 3, 0.12), 0.2, s.pal.nucleus, 1.9+0.3*rng.Float64())
		return g, clip
	}
	lobes := 3 + rng.Intn(3)
	a := rng.Float64() * 2 * math.Pi
	px, py := g.randInside(rng, 0.35, 0.45)
	for i := range lobes {
		lr := r * (0.2 + 0.06*rng.Float64())
		if i > 0 {
			a += (rng.Float64() - 0.5) * 2.2
			nx, ny := px+lr*1.9*math.Cos(a), py+lr*1.9*math.Sin(a)
			// Keep lobes inside the cell, turning back towards the centre.
			if u, v := g.local(nx, ny); math.Hypot(u, v) > 0.6 {
				a = math.Atan2(g.cy-py, g.cx-px) + (rng.Float64()-0.5)*1.2
				nx, ny = px+lr*1.9*math.Cos(a), py+lr*1.9*math.Sin(a)
			}
			// A thin chromatin bridge joins the lobes.
			for k := 0.2; k < 1; k += 0.2 {
				c.disc(clip, px+(nx-px)*k, py+(ny-py)*k, math.Max(lr*0.25, 1), s.pal.nucleus, 1.3)
			}
			px, py = nx, ny
		}
		c.blob(clip, px, py, lr, randHarmonics(rng, 2, 3, 0.2), 0.3, s.pal.nucleus, 1.9+0.3*rng.Float64())
	}
	return g, clip
}

// grid buckets cell centres so that placement checks only neighbours.
type grid struct {
	cell       float64
	cols, rows int
	b          [][]int
}

func newGrid(w, h int, cell float64) *grid {
	cols, rows := int(float64(w)/cell)+1, int(float64(h)/cell)+1
	return &grid{cell: cell, cols: cols, rows: rows, b: make([][]int, cols*rows)}
}

func (g *grid) idx(x, y float64) (int, int) {
	cx := min(max(int(x/g.cell), 0), g.cols-1)
	cy := min(max(int(y/g.cell), 0), g.rows-1)
	return cx, cy
}

func (g *grid) add(i int, x, y float64) {
	cx, cy := g.idx(x, y)
	g.b[cy*g.cols+cx] = append(g.b[cy*g.cols+cx], i)
}

// near calls fn for every item in the 3x3 buckets around (x,y); the bucket
// is wider than any two cells' reach, so nothing that can touch is missed.
func (g *grid) near(x, y float64, fn func(i int)) {
	cx, cy := g.idx(x, y)
	for yy := max(cy-1, 0); yy <= min(cy+1, g.rows-1); yy++ {
		for xx := max(cx-1, 0); xx <= min(cx+1, g.cols-1); xx++ {
			for _, i := range g.b[yy*g.cols+xx] {
				fn(i)
			}
		}
	}
}

// FieldAt generates field i of the run (seed, knobs, fieldsPerSlide); like
// CellAt it depends only on its arguments.
func FieldAt(seed int64, k Knobs, fieldsPerSlide, i int) (*image.RGBA, FieldTruth, Slide) {
	if fieldsPerSlide <= 0 {
		fieldsPerSlide = DefaultFieldsPerSlide
	}
	si := i / fieldsPerSlide
	slide := NewSlide(SlideID(seed, si), newRand(mixSeed(seed, domFieldSlide, uint64(si))), k)
	img, t := slide.RenderField(newRand(mixSeed(seed, domField, uint64(i))), fmt.Sprintf("field_%03d", i%fieldsPerSlide))
	return img, t, slide
}

// FieldsConfig describes a field run on disk.
type FieldsConfig struct {
	Dir            string
	N              int
	Seed           int64
	FieldsPerSlide int // <= 0: DefaultFieldsPerSlide
	Knobs          Knobs
	Workers        int
	Progress       func()
}

// FieldsSummary counts what a field run wrote.
type FieldsSummary struct {
	Fields, Slides, RBC, Parasitized, WBC int
}

// WriteFields writes N fields as Dir/<slide>/field_NNN.png (or .jpg) with
// the truth beside each as field_NNN.json.
func WriteFields(ctx context.Context, cfg FieldsConfig) (FieldsSummary, error) {
	if cfg.N <= 0 {
		return FieldsSummary{}, fmt.Errorf("n: %d, want > 0", cfg.N)
	}
	if err := cfg.Knobs.Validate(); err != nil {
		return FieldsSummary{}, err
	}
	per := cfg.FieldsPerSlide
	if per <= 0 {
		per = DefaultFieldsPerSlide
	}
	truths := make([]FieldTruth, cfg.N)
	err := parallel(ctx, cfg.N, cfg.Workers, func(i int) error {
		img, t, _ := FieldAt(cfg.Seed, cfg.Knobs, per, i)
		dir := filepath.Join(cfg.Dir, t.Slide)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create slide folder: %w", err)
		}
		var buf bytes.Buffer
		if err := Encode(&buf, img, cfg.Knobs); err != nil {
			return fmt.Errorf("encode %s: %w", t.Field, err)
		}
		if err := os.WriteFile(filepath.Join(dir, t.Field+cfg.Knobs.Ext()), buf.Bytes(), 0o644); err != nil {
			return fmt.Errorf("write field: %w", err)
		}
		js, err := json.MarshalIndent(t, "", " ")
		if err != nil {
			return fmt.Errorf("encode truth: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, t.Field+".json"), append(js, '\n'), 0o644); err != nil {
			return fmt.Errorf("write truth: %w", err)
		}
		truths[i] = t
		if cfg.Progress != nil {
			cfg.Progress()
		}
		return nil
	})
	if err != nil {
		return FieldsSummary{}, err
	}
	sum := FieldsSummary{Fields: cfg.N, Slides: (cfg.N + per - 1) / per}
	for _, t := range truths {
		sum.RBC += t.RBC
		sum.Parasitized += t.Parasitized
		sum.WBC += t.WBC
	}
	return sum, nil
}
