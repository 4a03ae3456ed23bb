package drift

import (
	"math"
	"math/rand/v2"
)

// newRand returns a generator whose output is fixed by (seed, stream): PCG is
// a specified algorithm, so baselines built from the same inputs are identical
// across Go versions and machines.
func newRand(seed, stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, stream^0x9e3779b97f4a7c15))
}

// normal draws a standard normal value by Box-Muller from r's uniforms. It is
// written out (rather than r.NormFloat64) so that projections regenerated
// from a stored seed never depend on the standard library's algorithm choice.
func normal(r *rand.Rand) float64 {
	for {
		u := r.Float64()
		if u > 0 {
			v := r.Float64()
			return math.Sqrt(-2*math.Log(u)) * math.Cos(2*math.Pi*v)
		}
	}
}

// splitmix64 hashes x; used as a stateless, counter-based uniform so that the
// randomised rate test needs no generator state to persist.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// hashUniform maps (a, b, c) to a uniform value in [0, 1).
func hashUniform(a, b, c uint64) float64 {
	h := splitmix64(a ^ splitmix64(b^splitmix64(c)))
	return float64(h>>11) / (1 << 53)
}
