package drift

import (
	"fmt"
	"testing"
)

// BenchmarkEngineObserve measures the per-score update of the sequential
// tests (CvM and rate on three windows) for growing reference and window
// sizes: the cost grows with log(reference), not with the window.
func BenchmarkEngineObserve(b *testing.B) {
	for _, nref := range []int{1000, 4000, 16000} {
		for _, maxW := range []int{100, 1000, 10000} {
			b.Run(fmt.Sprintf("ref=%d/window=%d", nref, maxW), func(b *testing.B) {
				s, _, _ := synthCells(nref, 0.2, 0, 1)
				ref := newReference(s, 0.5, nil, nil, nil)
				tests := testsFor(map[string]float64{SignalScores: 1, SignalRate: 1}, []int{maxW / 20, maxW / 5, maxW})
				e := newEngine(ref, tests, 1)
				live, _, _ := synthCells(4096, 0.2, 0.3, 2)
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					e.observe(live[i&4095], 0, nil)
				}
			})
		}
	}
}

// BenchmarkMonitorObserve is the daemon's per-cell cost: projection of the
// features, the feature map, all tests and the performance estimate.
func BenchmarkMonitorObserve(b *testing.B) {
	for _, feats := range []bool{false, true} {
		b.Run(fmt.Sprintf("embedding=%v", feats), func(b *testing.B) {
			base := smallBaseline(b, 300, 60, []int{20, 60}, 100, feats)
			m, err := NewMonitor(base)
			if err != nil {
				b.Fatal(err)
			}
			s, _, f := synthCells(4096, 0.2, 0, 2)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				var ff []float32
				if feats {
					ff = f[i&4095]
				}
				if _, err := m.Observe(Observation{Score: s[i&4095], Features: ff}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMonitorObserveFocus adds the focus signal to the scores and
// rate tests: one more CvM per window.
func BenchmarkMonitorObserveFocus(b *testing.B) {
	base := focusBaseline(b, 300, 60, []int{20, 60}, 100)
	m, err := NewMonitor(base)
	if err != nil {
		b.Fatal(err)
	}
	s, l, f := synthCells(4096, 0.2, 0, 2)
	foc := synthFocus(l, 0.9, 3)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := m.Observe(Observation{Score: s[i&4095], Features: f[i&4095], Focus: foc[i&4095]}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCvMUpdate isolates one add+remove of the Fenwick-tree CvM.
func BenchmarkCvMUpdate(b *testing.B) {
	for _, nref := range []int{1000, 16000, 256000} {
		b.Run(fmt.Sprintf("ref=%d", nref), func(b *testing.B) {
			s, _, _ := synthCells(nref, 0.2, 0, 1)
			cr := newCvMRef(s)
			w := newCvMWindow(cr)
			live, _, _ := synthCells(1024, 0.2, 0.3, 2)
			cells := make([]int, len(live))
			twoR := make([]int64, len(live))
			for i, x := range live {
				cells[i], twoR[i] = cr.locate(x)
			}
			for i := range 512 {
				w.update(live[i], cells[i], twoR[i], 1)
			}
			b.ResetTimer()
			for i := range b.N {
				j, k := (i+512)&1023, i&1023
				w.update(live[j], cells[j], twoR[j], 1)
				w.update(live[k], cells[k], twoR[k], -1)
				_ = w.stat()
			}
		})
	}
}
