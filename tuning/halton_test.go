package tuning

import (
	"math/rand/v2"
	"reflect"
	"testing"
)

func newTestHalton(t *testing.T, dim int, seed uint64) *Halton {
	t.Helper()
	h, err := NewHalton(dim, rand.New(rand.NewPCG(seed, 1)))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestHaltonDeterministicAndSeeded(t *testing.T) {
	a, b, c := newTestHalton(t, 6, 1), newTestHalton(t, 6, 1), newTestHalton(t, 6, 2)
	same, differ := true, false
	for i := range 100 {
		pa, pb, pc := a.Point(i, make([]float64, 6)), b.Point(i, make([]float64, 6)), c.Point(i, make([]float64, 6))
		same = same && reflect.DeepEqual(pa, pb)
		differ = differ || !reflect.DeepEqual(pa, pc)
	}
	if !same || !differ {
		t.Fatalf("same seed same points: %v; other seed other points: %v", same, differ)
	}
	// Independent of call order.
	late := a.Point(57, make([]float64, 6))
	fresh := newTestHalton(t, 6, 1).Point(57, make([]float64, 6))
	if !reflect.DeepEqual(late, fresh) {
		t.Fatal("Point(57) depends on earlier calls")
	}
}

func TestHaltonStratifies(t *testing.T) {
	const n, bins = 256, 16
	h := newTestHalton(t, 6, 3)
	counts := make([][]int, 6)
	for d := range counts {
		counts[d] = make([]int, bins)
	}
	grid := map[[2]int]bool{}
	for i := range n {
		p := h.Point(i, make([]float64, 6))
		for d, x := range p {
			if x < 0 || x >= 1 {
				t.Fatalf("point %d: coordinate %d = %v outside [0,1)", i, d, x)
			}
			counts[d][int(x*bins)]++
		}
		if i < 64 {
			grid[[2]int{int(p[0] * 4), int(p[1] * 4)}] = true
		}
	}
	for d, c := range counts {
		for b, k := range c {
			if k < 10 || k > 22 {
				t.Errorf("dimension %d: bin %d holds %d of %d points", d, b, k, n)
			}
		}
	}
	if len(grid) != 16 {
		t.Errorf("the first 64 points fill %d of the 16 cells of a 4x4 grid", len(grid))
	}
}

func TestHaltonRefusesDimension(t *testing.T) {
	for _, d := range []int{0, 65} {
		if _, err := NewHalton(d, rand.New(rand.NewPCG(1, 1))); err == nil {
			t.Errorf("dimension %d accepted", d)
		}
	}
}
