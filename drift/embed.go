package drift

import (
	"fmt"
	"math"
	"slices"
)

// Embedding is the baseline's reference for the embedding signal: a seeded
// Gaussian random projection of the backbone features to Dim dimensions,
// standardised per dimension on the reference, and random Fourier features
// of a Gaussian kernel on the projected space, so that the squared MMD
// between a window and the reference is the squared distance between mean
// feature maps and updates in O(RFFDim) per score.
type Embedding struct {
	InputDim       int       `json:"input_dim"`
	Dim            int       `json:"dim"`
	ProjectionSeed uint64    `json:"projection_seed"`
	Mean           []float64 `json:"mean"`
	Std            []float64 `json:"std"`
	RFFDim         int       `json:"rff_dim"`
	RFFSeed        uint64    `json:"rff_seed"`
	Bandwidth      float64   `json:"bandwidth"`

	proj  []float64 // InputDim x Dim, regenerated from the seed
	omega []float64 // RFFDim x Dim
	phase []float64 // RFFDim
}

func (e *Embedding) validate() error {
	switch {
	case e.InputDim < 1 || e.InputDim > 1<<16:
		return fmt.Errorf("embedding.input_dim %d: want 1..65536", e.InputDim)
	case e.Dim < 1 || e.Dim > 256:
		return fmt.Errorf("embedding.dim %d: want 1..256", e.Dim)
	case len(e.Mean) != e.Dim || len(e.Std) != e.Dim:
		return fmt.Errorf("embedding.mean/std: want %d values each, have %d and %d", e.Dim, len(e.Mean), len(e.Std))
	case e.RFFDim < 1 || e.RFFDim > 4096:
		return fmt.Errorf("embedding.rff_dim %d: want 1..4096", e.RFFDim)
	case !(e.Bandwidth > 0) || math.IsInf(e.Bandwidth, 0):
		return fmt.Errorf("embedding.bandwidth %v: want a positive finite number", e.Bandwidth)
	}
	for i := range e.Mean {
		if !finite(e.Mean[i]) || !(e.Std[i] > 0) || !finite(e.Std[i]) {
			return fmt.Errorf("embedding mean/std[%d] = %v/%v: want finite, std > 0", i, e.Mean[i], e.Std[i])
		}
	}
	return nil
}

// init regenerates the projection and Fourier weights from the seeds.
func (e *Embedding) init() {
	if e.proj != nil {
		return
	}
	r := newRand(e.ProjectionSeed, 1)
	e.proj = make([]float64, e.InputDim*e.Dim)
	s := 1 / math.Sqrt(float64(e.Dim))
	for i := range e.proj {
		e.proj[i] = normal(r) * s
	}
	r = newRand(e.RFFSeed, 2)
	e.omega = make([]float64, e.RFFDim*e.Dim)
	for i := range e.omega {
		e.omega[i] = normal(r) / e.Bandwidth
	}
	e.phase = make([]float64, e.RFFDim)
	for i := range e.phase {
		e.phase[i] = r.Float64() * 2 * math.Pi
	}
}

// rawProject applies the random projection without standardisation.
func (e *Embedding) rawProject(f []float32, out []float64) {
	clear(out)
	for i, v := range f {
		if v == 0 {
			continue
		}
		row := e.proj[i*e.Dim : (i+1)*e.Dim]
		for j := range out {
			out[j] += float64(v) * row[j]
		}
	}
}

// Project maps backbone features to the standardised projected space.
func (e *Embedding) Project(f []float32) ([]float32, error) {
	if len(f) != e.InputDim {
		return nil, fmt.Errorf("features: have %d values, the baseline expects %d", len(f), e.InputDim)
	}
	out := make([]float32, e.Dim)
	e.projectInto(f, make([]float64, e.Dim), out)
	return out, nil
}

// projectInto is Project into caller-owned buffers (len Dim each); f must
// have InputDim values.
func (e *Embedding) projectInto(f []float32, tmp []float64, out []float32) {
	e.init()
	e.rawProject(f, tmp)
	for j := range tmp {
		out[j] = float32((tmp[j] - e.Mean[j]) / e.Std[j])
	}
}

// featureMap writes the random Fourier features of projected z into phi.
func (e *Embedding) featureMap(z []float32, phi []float64) {
	e.init()
	s := math.Sqrt(2 / float64(e.RFFDim))
	for i := range phi {
		w := e.omega[i*e.Dim : (i+1)*e.Dim]
		a := e.phase[i]
		for j, v := range z {
			a += w[j] * float64(v)
		}
		phi[i] = s * math.Cos(a)
	}
}

// newEmbedding fits the standardisation and the kernel bandwidth (median
// heuristic) on the reference features and returns the embedding with the
// projected reference rows.
func newEmbedding(features [][]float32, dim, rffDim int, seed uint64) (*Embedding, [][]float32, error) {
	if len(features) == 0 {
		return nil, nil, nil
	}
	in := len(features[0])
	for i, f := range features {
		if len(f) != in {
			return nil, nil, fmt.Errorf("features row %d: %d values, row 0 has %d", i, len(f), in)
		}
		for j, v := range f {
			if !finite(float64(v)) {
				return nil, nil, fmt.Errorf("features row %d column %d: %v is not finite", i, j, v)
			}
		}
	}
	e := &Embedding{InputDim: in, Dim: dim, ProjectionSeed: splitmix64(seed ^ 0x51), RFFDim: rffDim, RFFSeed: splitmix64(seed ^ 0x52), Bandwidth: 1}
	r := newRand(e.ProjectionSeed, 1)
	e.proj = make([]float64, in*dim)
	s := 1 / math.Sqrt(float64(dim))
	for i := range e.proj {
		e.proj[i] = normal(r) * s
	}
	raw := make([][]float64, len(features))
	e.Mean, e.Std = make([]float64, dim), make([]float64, dim)
	for i, f := range features {
		raw[i] = make([]float64, dim)
		e.rawProject(f, raw[i])
		for j, v := range raw[i] {
			e.Mean[j] += v
		}
	}
	for j := range e.Mean {
		e.Mean[j] /= float64(len(raw))
	}
	for _, v := range raw {
		for j := range v {
			d := v[j] - e.Mean[j]
			e.Std[j] += d * d
		}
	}
	for j := range e.Std {
		e.Std[j] = math.Sqrt(e.Std[j] / float64(max(1, len(raw)-1)))
		if !(e.Std[j] > 1e-12) {
			e.Std[j] = 1 // a constant direction carries no information; keep it finite
		}
	}
	z := make([][]float32, len(raw))
	for i, v := range raw {
		z[i] = make([]float32, dim)
		for j := range v {
			z[i][j] = float32((v[j] - e.Mean[j]) / e.Std[j])
		}
	}
	// Median heuristic on at most 400 rows (80k pairs) keeps this cheap.
	m := min(len(z), 400)
	var d []float64
	for i := 0; i < m; i++ {
		for j := i + 1; j < m; j++ {
			var s2 float64
			for k := range z[i] {
				t := float64(z[i][k] - z[j][k])
				s2 += t * t
			}
			d = append(d, math.Sqrt(s2))
		}
	}
	if len(d) > 0 {
		slices.Sort(d)
		if med := d[len(d)/2]; med > 1e-9 {
			e.Bandwidth = med
		}
	}
	e.proj = nil // regenerate through init with the final bandwidth
	e.init()
	return e, z, nil
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
