package drift

import (
	"math"
	"slices"
	"sort"
)

// KS2Samp returns the two-sided two-sample Kolmogorov-Smirnov statistic
// sup |F_x - F_y| (scipy.stats.ks_2samp's statistic). Ties are handled by
// evaluating both empirical distribution functions after each distinct value.
func KS2Samp(x, y []float64) float64 {
	if len(x) == 0 || len(y) == 0 {
		return math.NaN()
	}
	a, b := sortedCopy(x), sortedCopy(y)
	var i, j int
	var d float64
	for i < len(a) && j < len(b) {
		v := min(a[i], b[j])
		for i < len(a) && a[i] == v {
			i++
		}
		for j < len(b) && b[j] == v {
			j++
		}
		d = max(d, math.Abs(float64(i)/float64(len(a))-float64(j)/float64(len(b))))
	}
	return d
}

// CramerVonMises2Samp returns the two-sample Cramér-von Mises statistic T of
// Anderson (1962) with mid-ranks for ties, the statistic of
// scipy.stats.cramervonmises_2samp.
func CramerVonMises2Samp(x, y []float64) float64 {
	nx, ny := len(x), len(y)
	if nx == 0 || ny == 0 {
		return math.NaN()
	}
	a, b := sortedCopy(x), sortedCopy(y)
	pooled := make([]float64, 0, nx+ny)
	pooled = append(append(pooled, a...), b...)
	ranks := midRanks(pooled)
	var u1, u2 float64
	for i := range nx {
		d := ranks[i] - float64(i+1)
		u1 += d * d
	}
	for j := range ny {
		d := ranks[nx+j] - float64(j+1)
		u2 += d * d
	}
	k, n := float64(nx)*float64(ny), float64(nx+ny)
	u := float64(nx)*u1 + float64(ny)*u2
	return u/(k*n) - (4*k-1)/(6*n)
}

// midRanks returns the 1-based average ranks of v (scipy.stats.rankdata with
// method="average").
func midRanks(v []float64) []float64 {
	idx := make([]int, len(v))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(p, q int) bool { return v[idx[p]] < v[idx[q]] })
	r := make([]float64, len(v))
	for i := 0; i < len(idx); {
		j := i
		for j < len(idx) && v[idx[j]] == v[idx[i]] {
			j++
		}
		avg := float64(i+1+j) / 2
		for k := i; k < j; k++ {
			r[idx[k]] = avg
		}
		i = j
	}
	return r
}

// Wasserstein1D returns the first Wasserstein distance between the empirical
// distributions of u and v (scipy.stats.wasserstein_distance).
func Wasserstein1D(u, v []float64) float64 {
	if len(u) == 0 || len(v) == 0 {
		return math.NaN()
	}
	a, b := sortedCopy(u), sortedCopy(v)
	all := slices.Concat(a, b)
	slices.Sort(all)
	var w float64
	var i, j int
	for k := 0; k+1 < len(all); k++ {
		for i < len(a) && a[i] <= all[k] {
			i++
		}
		for j < len(b) && b[j] <= all[k] {
			j++
		}
		w += math.Abs(float64(i)/float64(len(a))-float64(j)/float64(len(b))) * (all[k+1] - all[k])
	}
	return w
}

// JensenShannon returns the Jensen-Shannon distance (square root of the
// divergence, natural log) between two histograms, each normalised to sum to
// one (scipy.spatial.distance.jensenshannon).
func JensenShannon(p, q []float64) float64 {
	if len(p) != len(q) || len(p) == 0 {
		return math.NaN()
	}
	sp, sq := sum(p), sum(q)
	if sp <= 0 || sq <= 0 {
		return math.NaN()
	}
	var js float64
	for i := range p {
		a, b := p[i]/sp, q[i]/sq
		m := (a + b) / 2
		if a > 0 {
			js += a * math.Log(a/m)
		}
		if b > 0 {
			js += b * math.Log(b/m)
		}
	}
	return math.Sqrt(max(js/2, 0))
}

// psiFloor keeps empty bins from making the population stability index
// infinite; it is the customary floor of 1e-4 per bin proportion.
const psiFloor = 1e-4

// PSI returns the population stability index sum (a-e) ln(a/e) of the actual
// histogram against the expected one, bin proportions floored at 1e-4.
func PSI(expected, actual []float64) float64 {
	if len(expected) != len(actual) || len(expected) == 0 {
		return math.NaN()
	}
	se, sa := sum(expected), sum(actual)
	if se <= 0 || sa <= 0 {
		return math.NaN()
	}
	var psi float64
	for i := range expected {
		e := max(expected[i]/se, psiFloor)
		a := max(actual[i]/sa, psiFloor)
		psi += (a - e) * math.Log(a/e)
	}
	return psi
}

// scoreBins is the number of equal-width bins on [0, 1] used for PSI and
// Jensen-Shannon on scores. Quantile bins of the baseline would collapse:
// most scores sit at 0 or 1.
const scoreBins = 20

// histogram counts v into nbins equal-width bins on [0, 1]; values outside
// go to the end bins.
func histogram(v []float64, nbins int) []float64 {
	h := make([]float64, nbins)
	for _, x := range v {
		i := int(x * float64(nbins))
		h[min(max(i, 0), nbins-1)]++
	}
	return h
}

// quantileSorted returns the q-quantile of sorted s by linear interpolation
// (numpy's default).
func quantileSorted(s []float64, q float64) float64 {
	if len(s) == 0 {
		return math.NaN()
	}
	pos := q * float64(len(s)-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, len(s)-1)
	return s[lo] + (pos-float64(lo))*(s[hi]-s[lo])
}

func sortedCopy(v []float64) []float64 {
	c := slices.Clone(v)
	slices.Sort(c)
	return c
}

func sum(v []float64) float64 {
	var s float64
	for _, x := range v {
		s += x
	}
	return s
}
