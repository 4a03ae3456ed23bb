package drift

import (
	"math"
	"slices"
	"sort"
)

// cvmRef is the fixed reference of the online Cramér-von Mises test: its
// distinct values with their multiplicities. A live score falls in one of
// 2K+1 cells: cell 2k+1 is "equal to the k-th distinct value" (an atom; scores
// saturate at 0 and 1, so atoms are common), cell 2k the open gap below it,
// cell 2K the gap above the largest value.
type cvmRef struct {
	vals []float64
	cnt  []int64 // multiplicity of vals[k]
	asuf []int64 // asuf[k] = sum of cnt[k:], len K+1
	n    int64
	tieX int64 // sum over atoms of cnt^3 - cnt
}

func newCvMRef(scores []float64) *cvmRef {
	s := slices.Clone(scores)
	slices.Sort(s)
	r := &cvmRef{n: int64(len(s))}
	for i := 0; i < len(s); {
		j := i
		for j < len(s) && s[j] == s[i] {
			j++
		}
		r.vals = append(r.vals, s[i])
		c := int64(j - i)
		r.cnt = append(r.cnt, c)
		r.tieX += c*c*c - c
		i = j
	}
	r.asuf = make([]int64, len(r.vals)+1)
	for k := len(r.vals) - 1; k >= 0; k-- {
		r.asuf[k] = r.asuf[k+1] + r.cnt[k]
	}
	return r
}

func (r *cvmRef) cells() int { return 2*len(r.vals) + 1 }

// locate returns x's cell and twice its mid-rank count among the reference,
// 2*#{ref < x} + #{ref == x}.
func (r *cvmRef) locate(x float64) (cell int, twoR int64) {
	k := sort.SearchFloat64s(r.vals, x)
	below := r.n - r.asuf[k]
	if k < len(r.vals) && r.vals[k] == x {
		return 2*k + 1, 2*below + r.cnt[k]
	}
	return 2 * k, 2 * below
}

// cvmWindow maintains the two-sample Cramér-von Mises statistic T (Anderson
// 1962, mid-ranks for ties: exactly scipy's cramervonmises_2samp) between the
// fixed reference and a multiset of live scores, under insertion and removal
// in O(log K).
//
// With U = N*X + M*Y and T = U/(NM(N+M)) - (4NM-1)/(6(N+M)):
//
//	X = sum over atoms k of cnt_k*(L_k + b_k/2)^2 + (cnt_k^3 - cnt_k)/12
//	Y = sum over live scores of R^2 + sum over distinct live values (b^3-b)/12
//
// where L_k counts live scores below atom k, b_k those equal to it, and R is a
// live score's mid-rank count among the reference. Y is a plain sum; X needs
// suffix sums of cnt_k*H_k (H_k = 2L_k + b_k), kept in three Fenwick trees
// over the cells.
type cvmWindow struct {
	ref        *cvmRef
	m          int64
	f1, f2, f3 fenwick           // per cell: count, count*asuf[first atom above], count*cnt (atoms)
	x4         int64             // sum cnt_k * H_k^2
	y4         int64             // sum (2R)^2
	tieY       int64             // sum over distinct live values of b^3 - b
	ties       map[float64]int32 // live value -> multiplicity
}

func newCvMWindow(ref *cvmRef) *cvmWindow {
	n := ref.cells()
	return &cvmWindow{ref: ref, f1: newFenwick(n), f2: newFenwick(n), f3: newFenwick(n), ties: map[float64]int32{}}
}

func (w *cvmWindow) reset() {
	w.m, w.x4, w.y4, w.tieY = 0, 0, 0, 0
	w.f1.clear()
	w.f2.clear()
	w.f3.clear()
	clear(w.ties)
}

// suffixH returns sum over atoms k >= k1 of cnt_k*H_k.
func (w *cvmWindow) suffixH(k1 int) int64 {
	last := w.ref.cells() - 1
	return 2*(w.ref.asuf[k1]*w.f1.prefix(2*k1)+w.f2.rangeSum(2*k1+1, last)) + w.f3.rangeSum(2*k1+1, last)
}

// update adds (sign=+1) or removes (sign=-1) one live score located at
// (cell, twoR).
func (w *cvmWindow) update(x float64, cell int, twoR int64, sign int64) {
	k1 := (cell + 1) / 2 // first atom strictly above the cell
	s := w.suffixH(k1)
	dx := sign*4*s + 4*w.ref.asuf[k1]
	var a int64
	if cell%2 == 1 {
		a = w.ref.cnt[(cell-1)/2]
		h0 := 2*w.f1.prefix(cell-1) + w.f1.rangeSum(cell, cell)
		dx += a * (sign*2*h0 + 1)
	}
	w.x4 += dx
	w.f1.add(cell, sign)
	w.f2.add(cell, sign*w.ref.asuf[k1])
	if a != 0 {
		w.f3.add(cell, sign*a)
	}
	w.y4 += sign * twoR * twoR
	b := int64(w.ties[x])
	if sign > 0 {
		w.tieY += 3*b*b + 3*b
		w.ties[x] = int32(b + 1)
	} else {
		w.tieY -= 3*b*b - 3*b
		if b <= 1 {
			delete(w.ties, x)
		} else {
			w.ties[x] = int32(b - 1)
		}
	}
	w.m += sign
}

// stat returns T, or NaN for an empty window.
func (w *cvmWindow) stat() float64 {
	if w.m == 0 {
		return math.NaN()
	}
	n, m := float64(w.ref.n), float64(w.m)
	x := float64(w.x4)/4 + float64(w.ref.tieX)/12
	y := float64(w.y4)/4 + float64(w.tieY)/12
	u := n*x + m*y
	k, nn := n*m, n+m
	return u/(k*nn) - (4*k-1)/(6*nn)
}
