package tuning

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// Halton draws points of a scrambled Halton sequence in [0,1)^dim, the
// exploration phase's quasi-random design: a quasi-random sequence covers
// the space more evenly than random points for the same number of trials,
// which is what the seed article asks of exploration.
//
// Dimension k uses the k-th prime as its base. Plain Halton points in two
// large bases are strongly correlated (their first points lie on lines), so
// every digit position of every base has its own random permutation of the
// digits, drawn from the study's seed. A permutation of digits keeps the
// stratification that makes the sequence low-discrepancy: the first b^m
// points still fall one into each interval of width b^-m.
type Halton struct {
	bases []int
	perms [][][]uint16 // perms[dim][position][digit]
}

// maxHaltonDim bounds the dimension: the 64th prime is 311.
const maxHaltonDim = 64

// NewHalton returns a sequence for dim dimensions (1..64) scrambled by
// permutations drawn from rng; the same rng state gives the same sequence.
func NewHalton(dim int, rng *rand.Rand) (*Halton, error) {
	if dim < 1 || dim > maxHaltonDim {
		return nil, fmt.Errorf("halton: dimension %d outside 1..%d", dim, maxHaltonDim)
	}
	h := &Halton{bases: primes(dim), perms: make([][][]uint16, dim)}
	for k, b := range h.bases {
		// Enough digit positions to reach float64 resolution.
		n := int(math.Ceil(53 / math.Log2(float64(b))))
		h.perms[k] = make([][]uint16, n)
		for pos := range n {
			p := make([]uint16, b)
			for d := range p {
				p[d] = uint16(d)
			}
			rng.Shuffle(b, func(i, j int) { p[i], p[j] = p[j], p[i] })
			h.perms[k][pos] = p
		}
	}
	return h, nil
}

// Point returns the i-th point (i >= 0) into dst (length dim). It depends on
// i and the scramble only, never on earlier calls.
func (h *Halton) Point(i int, dst []float64) []float64 {
	if i < 0 {
		panic("halton: negative index")
	}
	for k, b := range h.bases {
		var x float64
		scale := 1 / float64(b)
		n := i
		for _, p := range h.perms[k] {
			// Digits beyond the index's own are zeros, permuted as well:
			// otherwise the scramble would change only the leading digits.
			x += float64(p[n%b]) * scale
			n /= b
			scale /= float64(b)
		}
		dst[k] = math.Min(x, math.Nextafter(1, 0))
	}
	return dst
}

// primes returns the first n primes.
func primes(n int) []int {
	out := make([]int, 0, n)
	for c := 2; len(out) < n; c++ {
		prime := true
		for _, p := range out {
			if p*p > c {
				break
			}
			if c%p == 0 {
				prime = false
				break
			}
		}
		if prime {
			out = append(out, c)
		}
	}
	return out
}
