package tuning

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestMatern52(t *testing.T) {
	// Values of (1 + √5r + 5r²/3) exp(-√5r), computed by hand in Python.
	for _, c := range []struct{ r, want float64 }{
		{0, 1},
		{0.5, 0.8286491424181255},
		{1, 0.5239941088318203},
		{2, 0.13866021913850426},
	} {
		if got := Matern52(c.r); math.Abs(got-c.want) > 1e-15 {
			t.Errorf("Matern52(%v) = %v, want %v", c.r, got, c.want)
		}
	}
	// With length scales (0.5, 1) and signal variance 2, points (0,0) and
	// (0.3,0.4) are at scaled distance √0.52.
	g, err := NewGPWithHyper([][]float64{{0, 0}}, []float64{0}, nil, []float64{math.Log(0.5), 0, math.Log(2), math.Log(1e-3)})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := g.kernel([]float64{0, 0}, []float64{0.3, 0.4}), 1.3874596795963383; math.Abs(got-want) > 1e-14 {
		t.Errorf("kernel = %v, want %v", got, want)
	}
}

// sample1D returns noiseless samples of a smooth function on [0,1].
func sample1D(n int) ([][]float64, []float64) {
	var x [][]float64
	var y []float64
	for i := range n {
		u := (float64(i) + 0.5) / float64(n)
		x = append(x, []float64{u})
		y = append(y, math.Sin(6*u)+0.5*u)
	}
	return x, y
}

func TestGPInterpolatesNoiselessData(t *testing.T) {
	x, y := sample1D(8)
	g, err := FitGP(x, y, nil, FitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if nv := g.NoiseVariance(); nv > 1e-3 {
		t.Errorf("noise variance %v fitted to noiseless data", nv)
	}
	for i := range x {
		m, v := g.Predict(x[i])
		if math.Abs(m-y[i]) > 1e-3 {
			t.Errorf("mean at training point %v = %v, want %v", x[i][0], m, y[i])
		}
		if v > 1e-4 {
			t.Errorf("variance at training point %v = %v, want ~0", x[i][0], v)
		}
	}
	// Between training points the variance is larger, and larger still
	// beyond them.
	_, vTrain := g.Predict(x[3])
	_, vMid := g.Predict([]float64{(x[3][0] + x[4][0]) / 2})
	_, vFar := g.Predict([]float64{2})
	_, vFarther := g.Predict([]float64{4})
	if !(vTrain < vMid && vMid < vFar && vFar <= vFarther) {
		t.Errorf("variance does not grow away from the data: %v, %v, %v, %v", vTrain, vMid, vFar, vFarther)
	}
	// Far away the posterior reverts to the prior: the mean of the data,
	// the signal variance.
	m, v := g.Predict([]float64{50})
	var mean float64
	for _, yi := range y {
		mean += yi
	}
	mean /= float64(len(y))
	if math.Abs(m-mean) > 1e-6 || math.Abs(v-math.Exp(g.hyper[1+hypSignal])*g.ySD*g.ySD) > 1e-6 {
		t.Errorf("far prediction %v ± %v, want the prior %v", m, v, mean)
	}
	// The mean interpolates, so it predicts the function between points too.
	if m, _ := g.Predict([]float64{0.5}); math.Abs(m-(math.Sin(3)+0.25)) > 0.05 {
		t.Errorf("mean at 0.5 = %v, want about %v", m, math.Sin(3)+0.25)
	}
}

func TestGPLearnsNoise(t *testing.T) {
	// Noise of standard deviation 0.1 on a smooth function: the fit must
	// find it rather than interpolate it (or drown the signal in it).
	rng := rand.New(rand.NewPCG(5, 6))
	var x [][]float64
	var y []float64
	for range 80 {
		p := []float64{rng.Float64(), rng.Float64()}
		x = append(x, p)
		y = append(y, math.Sin(4*p[0])+p[1]*p[1]+0.1*rng.NormFloat64())
	}
	g, err := FitGP(x, y, nil, FitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if nv := g.NoiseVariance(); nv < 0.01/3 || nv > 0.01*3 {
		t.Errorf("noise variance %v, want about 0.01", nv)
	}
	if m, _ := g.Predict([]float64{0.5, 0.5}); math.Abs(m-(math.Sin(2)+0.25)) > 0.1 {
		t.Errorf("mean at (0.5, 0.5) = %v, want about %v", m, math.Sin(2)+0.25)
	}
}

func TestGPLengthScalesRankRelevance(t *testing.T) {
	// y depends strongly on x0, weakly on x1 and not at all on x2.
	rng := rand.New(rand.NewPCG(1, 2))
	var x [][]float64
	var y []float64
	for range 40 {
		p := []float64{rng.Float64(), rng.Float64(), rng.Float64()}
		x = append(x, p)
		y = append(y, math.Sin(5*p[0])+0.3*p[1])
	}
	g, err := FitGP(x, y, nil, FitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ls := g.LengthScales()
	if !(ls[0] < ls[1] && ls[1] < ls[2]) {
		t.Errorf("length scales %v, want increasing", ls)
	}
}

func TestLogMarginalLikelihoodGradient(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var x [][]float64
	var y []float64
	for range 15 {
		// Two float features and a one-hot pair sharing dimension 2.
		c := float64(rng.IntN(2))
		p := []float64{rng.Float64(), rng.Float64(), c, 1 - c}
		x = append(x, p)
		y = append(y, p[0]*p[0]-math.Cos(4*p[1])+c+0.05*rng.NormFloat64())
	}
	groups := []int{0, 1, 2, 2}
	for _, h := range [][]float64{
		{math.Log(0.3), math.Log(0.7), math.Log(1.2), 0.2, math.Log(1e-2)},
		{math.Log(0.05), math.Log(3), math.Log(0.5), -1, math.Log(1e-5)},
	} {
		g, err := NewGPWithHyper(x, y, groups, h)
		if err != nil {
			t.Fatal(err)
		}
		pre := g.sqDists()
		for name, f := range map[string]func([]float64, []float64) (float64, bool){
			"likelihood": func(h, grad []float64) (float64, bool) { return g.logMarginalLikelihood(h, pre, grad) },
			"posterior":  func(h, grad []float64) (float64, bool) { return g.logPosterior(h, pre, grad) },
		} {
			grad := make([]float64, len(h))
			if _, ok := f(h, grad); !ok {
				t.Fatalf("%s not finite at %v", name, h)
			}
			for i := range h {
				const eps = 1e-6
				hp := append([]float64(nil), h...)
				hm := append([]float64(nil), h...)
				hp[i] += eps
				hm[i] -= eps
				fp, _ := f(hp, nil)
				fm, _ := f(hm, nil)
				fd := (fp - fm) / (2 * eps)
				if math.Abs(fd-grad[i]) > 1e-5*math.Max(1, math.Abs(fd)) {
					t.Errorf("%s at %v: ∂/∂h[%d] = %v, finite difference %v", name, h, i, grad[i], fd)
				}
			}
		}
	}
}

func TestPredictGradient(t *testing.T) {
	x, y := sample1D(6)
	for i := range x {
		x[i] = append(x[i], float64(i%2), float64(1-i%2))
	}
	g, err := NewGPWithHyper(x, y, []int{0, 1, 1}, []float64{math.Log(0.3), math.Log(0.8), 0, math.Log(1e-4)})
	if err != nil {
		t.Fatal(err)
	}
	p := []float64{0.37, 1, 0}
	dm, dv := make([]float64, 3), make([]float64, 3)
	g.predictStd(p, dm, dv, nil)
	const eps = 1e-6
	pp := []float64{p[0] + eps, 1, 0}
	pm := []float64{p[0] - eps, 1, 0}
	mp, vp := g.predictStd(pp, nil, nil, nil)
	mm, vm := g.predictStd(pm, nil, nil, nil)
	if fd := (mp - mm) / (2 * eps); math.Abs(fd-dm[0]) > 1e-6*math.Max(1, math.Abs(fd)) {
		t.Errorf("∂mean = %v, finite difference %v", dm[0], fd)
	}
	if fd := (vp - vm) / (2 * eps); math.Abs(fd-dv[0]) > 1e-6*math.Max(1, math.Abs(fd)) {
		t.Errorf("∂variance = %v, finite difference %v", dv[0], fd)
	}
}

func TestLogH(t *testing.T) {
	// log(φ(z) + zΦ(z)) to 20 digits, from mpmath at 50 digits.
	for _, c := range []struct{ z, want float64 }{
		{5, 1.6094379231264313851},
		{1, 0.080026218849306940029},
		{0, -0.91893853320467274178},
		{-0.5, -1.6205162643873199193},
		{-1, -2.4851210257126413368},
		{-2, -4.7687835239171141569},
		{-5, -16.744301162660990143},
		{-10, -55.553122036122355927},
		{-20, -206.91783850942509785},
		{-40, -808.29856835661996024},
		{-100, -5010.1295788002497923},
		{-1000, -500014.73445209115845},
	} {
		if got := logH(c.z); math.Abs(got-c.want) > 1e-12*math.Max(1, math.Abs(c.want)) {
			t.Errorf("logH(%v) = %.17g, want %.17g", c.z, got, c.want)
		}
	}
	// Where EI is large the direct formula is exact enough to compare.
	for _, c := range []struct{ mu, sd, best float64 }{
		{0, 1, 0}, {0, 1, 1}, {1, 0.5, 0.8}, {-2, 3, 0}, {0.3, 0.01, 0.31},
	} {
		z := (c.best - c.mu) / c.sd
		direct := math.Log(c.sd * (normPDF(z) + z*normCDF(z)))
		if got := LogEI(c.mu, c.sd, c.best); math.Abs(got-direct) > 1e-12 {
			t.Errorf("LogEI(%v, %v, %v) = %v, direct %v", c.mu, c.sd, c.best, got, direct)
		}
	}
}

func TestLogHFiniteAndMonotone(t *testing.T) {
	prev := math.Inf(1)
	for z := 10.0; z >= -40; z -= 0.01 {
		v := logH(z)
		if math.IsNaN(v) || math.IsInf(v, 0) {
			t.Fatalf("logH(%v) = %v", z, v)
		}
		if v >= prev {
			t.Fatalf("logH not decreasing at z = %v: %v after %v", z, v, prev)
		}
		prev = v
		// The derivative Φ/h, against a finite difference.
		const eps = 1e-6
		fd := (logH(z+eps) - logH(z-eps)) / (2 * eps)
		if d := dLogH(z); math.Abs(d-fd) > 1e-5*math.Max(1, math.Abs(fd)) {
			t.Fatalf("dLogH(%v) = %v, finite difference %v", z, d, fd)
		}
	}
	for _, z := range []float64{-1e4, -1e8, -1e12} {
		if v := logH(z); math.IsNaN(v) || math.IsInf(v, 0) || dLogH(z) <= 0 {
			t.Errorf("logH(%v) = %v, derivative %v", z, v, dLogH(z))
		}
	}
	// A tiny improvement: the mean a hair above the best, a minute sd.
	if v := LogEI(1+1e-9, 1e-12, 1); math.IsNaN(v) || math.IsInf(v, 0) {
		t.Errorf("LogEI with tiny improvement = %v", v)
	}
}

func TestErfcx(t *testing.T) {
	// The continued fraction against mpmath, and against the direct
	// formula where both are valid.
	for _, c := range []struct{ x, want float64 }{
		{10, 0.056140992743822585858},
		{15, 0.037529606388505765746},
		{25, 0.022549572432641358944},
		{40, 0.014100335983377813625},
		{100, 0.0056416137829894329036},
	} {
		if got := erfcx(c.x); math.Abs(got-c.want) > 1e-14*c.want {
			t.Errorf("erfcx(%v) = %.17g, want %.17g", c.x, got, c.want)
		}
	}
	for x := 10.0; x < 25; x += 0.37 {
		direct := math.Exp(x*x) * math.Erfc(x)
		if got := erfcx(x); math.Abs(got-direct) > 1e-12*direct {
			t.Errorf("erfcx(%v) = %v, direct %v", x, got, direct)
		}
	}
}
