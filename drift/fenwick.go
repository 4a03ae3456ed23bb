package drift

// fenwick is a binary indexed tree of int64 over positions 0..n-1: point
// update and prefix sum in O(log n).
type fenwick struct {
	t []int64
}

func newFenwick(n int) fenwick { return fenwick{t: make([]int64, n+1)} }

func (f *fenwick) add(i int, v int64) {
	for i++; i < len(f.t); i += i & -i {
		f.t[i] += v
	}
}

// prefix returns the sum over positions 0..i (inclusive); i < 0 gives 0.
func (f *fenwick) prefix(i int) int64 {
	var s int64
	if i >= len(f.t)-1 {
		i = len(f.t) - 2
	}
	for i++; i > 0; i -= i & -i {
		s += f.t[i]
	}
	return s
}

// rangeSum returns the sum over positions lo..hi (inclusive).
func (f *fenwick) rangeSum(lo, hi int) int64 {
	if lo > hi {
		return 0
	}
	return f.prefix(hi) - f.prefix(lo-1)
}

func (f *fenwick) clear() { clear(f.t) }
