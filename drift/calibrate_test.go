package drift

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestRunLengthMatchesERT calibrates a small detector (ERT 300, warn 100,
// windows 20 and 60) and checks the mean drift-free run length on new cells
// from the same generator. 300 runs give a standard error of about 6%; the
// bound is +-25%. (No test runs before a window holds 10 scores, so very
// small ERTs cannot be met; at ERT 5000 those steps do not matter.)
func TestRunLengthMatchesERT(t *testing.T) {
	b := smallBaseline(t, 300, 100, []int{20, 60}, 1000, true)
	s, l, f := synthCells(30000, 0.2, 0, 77)
	rows := &EvalRows{Scores: s, Labels: l, Features: f}
	res, err := b.EvalRunLengths(context.Background(), rows, func() Sampler { return &Shuffled{N: len(s)} }, 300, 4000, 5)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("alarm %+v", res.Alarm)
	t.Logf("warn  %+v", res.Warn)
	if res.Alarm.Mean < 225 || res.Alarm.Mean > 375 {
		t.Errorf("mean run length to alarm %.1f, want 300 +- 25%%", res.Alarm.Mean)
	}
	if res.Warn.Mean < 75 || res.Warn.Mean > 125 {
		t.Errorf("mean run length to warn %.1f, want 100 +- 25%%", res.Warn.Mean)
	}
}

// TestBootstrapNullMatchesResampling: with the bootstrap null model, streams
// that resample the baseline's own reference rows run for the ERT on average.
func TestBootstrapNullMatchesResampling(t *testing.T) {
	s, l, f := synthCells(1500, 0.2, 0, 1)
	b, err := BuildBaseline(context.Background(), s, l, f, 0.5, BaselineConfig{
		Seed: 4, BootstrapReps: 50, DescriptiveSims: 20, MaxReference: 1000,
		Detector: CalibrationConfig{ERT: 300, WarnERT: 100, Windows: []int{20, 60}, Sims: 1000, Null: NullBootstrap},
	})
	if err != nil {
		t.Fatal(err)
	}
	rows := b.ReferenceRows()
	res, err := b.EvalRunLengths(context.Background(), rows, func() Sampler { return Resample{N: len(rows.Scores)} }, 300, 4000, 6)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("alarm %+v", res.Alarm)
	if res.Alarm.Mean < 225 || res.Alarm.Mean > 375 {
		t.Errorf("mean run length to alarm %.1f, want 300 +- 25%%", res.Alarm.Mean)
	}
}

// slideCells draws cells from slides that each shift the logits by their
// own offset (staining, focus): cells of a slide are alike.
func slideCells(slides, perSlide int, seed uint64) ([]float64, []int, []string) {
	r := newRand(seed, 7)
	var s []float64
	var l []int
	var ids []string
	for k := range slides {
		off := 1.2 * normal(r)
		for range perSlide {
			y := 0
			if r.Float64() < 0.2 {
				y = 1
			}
			mu := -4.0 + 8*float64(y)
			s = append(s, float64(float32(1/(1+math.Exp(-(mu+2*normal(r)+off))))))
			l = append(l, y)
			ids = append(ids, fmt.Sprintf("s%d-%d", seed, k))
		}
	}
	return s, l, ids
}

// TestSlideNullOnNewSlides: with slide effects, a baseline that knows the
// slides keeps its run length on cells of new slides near the ERT, where
// one that treats cells as independent alarms much too early.
func TestSlideNullOnNewSlides(t *testing.T) {
	s, l, ids := slideCells(60, 25, 1)
	ns, nl, _ := slideCells(2000, 25, 2) // new slides
	rows := &EvalRows{Scores: ns, Labels: nl}
	run := func(slides []string) float64 {
		b, err := BuildBaseline(context.Background(), s, l, nil, 0.5, BaselineConfig{
			Seed: 5, BootstrapReps: 20, DescriptiveSims: 10, Slides: slides,
			Detector: CalibrationConfig{ERT: 300, WarnERT: 100, Windows: []int{20, 100}, Sims: 800},
		})
		if err != nil {
			t.Fatal(err)
		}
		res, err := b.EvalRunLengths(context.Background(), rows, func() Sampler { return &Shuffled{N: len(ns)} }, 300, 5000, 9)
		if err != nil {
			t.Fatal(err)
		}
		return res.Alarm.Mean
	}
	withSlides, cells := run(ids), run(nil)
	t.Logf("mean run length on new slides: slide-aware %.0f, cell-level %.0f (ERT 300)", withSlides, cells)
	if withSlides < 200 || withSlides > 450 {
		t.Errorf("slide-aware null: mean run length %.0f, want near 300", withSlides)
	}
	if !(cells < withSlides) {
		t.Errorf("cell-level null ran %.0f, not shorter than slide-aware %.0f", cells, withSlides)
	}
}

// TestSlidesNullOnSlideStreams: a stream sent slide by slide (as a
// microscope sends it) sees one slide's offset at a time. The slide-mixing
// null alarms on it long before its ERT; the slides null, calibrated on
// whole reference slides, keeps the run length near the ERT.
func TestSlidesNullOnSlideStreams(t *testing.T) {
	s, l, ids := slideCells(60, 100, 1)
	ns, nl, nids := slideCells(300, 100, 2) // new slides
	rows := &EvalRows{Scores: ns, Labels: nl, Slides: nids}
	order, err := NewSlideOrder(nids)
	if err != nil {
		t.Fatal(err)
	}
	run := func(null string) float64 {
		b, err := BuildBaseline(context.Background(), s, l, nil, 0.5, BaselineConfig{
			Seed: 5, BootstrapReps: 20, DescriptiveSims: 10, Slides: ids, MaxReference: len(s),
			Detector: CalibrationConfig{ERT: 300, WarnERT: 100, Windows: []int{20, 100}, Sims: 1000, Null: null, SlideCells: [2]int{100, 100}, Horizon: 2000},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("null %s slide cells %v", b.Detector.Null, b.Detector.SlideCells)
		res, err := b.EvalRunLengths(context.Background(), rows, func() Sampler { return order.Clone() }, 300, 5000, 9)
		if err != nil {
			t.Fatal(err)
		}
		return res.Alarm.Mean
	}
	slides, mixed := run(NullSlides), run(NullExchangeable)
	t.Logf("mean run length slide by slide: slides null %.0f, slide-mixing null %.0f (ERT 300)", slides, mixed)
	if slides < 210 || slides > 390 {
		t.Errorf("slides null: mean run length %.0f, want 300 +- 30%%", slides)
	}
	if !(mixed < 0.5*slides) {
		t.Errorf("slide-mixing null ran %.0f on slide-ordered streams, want well below the slides null's %.0f", mixed, slides)
	}
}

// TestSlidesNullNeedsWholeSlides: a reference of a few cells per slide
// cannot stand for slides sent one at a time, and says so.
func TestSlidesNullNeedsWholeSlides(t *testing.T) {
	s, l, ids := slideCells(300, 3, 1)
	_, err := BuildBaseline(context.Background(), s, l, nil, 0.5, BaselineConfig{
		Seed: 5, BootstrapReps: 20, DescriptiveSims: 10, Slides: ids,
		Detector: CalibrationConfig{ERT: 300, WarnERT: 100, Windows: []int{20, 100}, Sims: 200, Null: NullSlides},
	})
	if !errors.Is(err, ErrInvalidBaseline) || !strings.Contains(err.Error(), "at least 50 cells") {
		t.Fatalf("err %v, want ErrInvalidBaseline naming the cells per slide needed", err)
	}
}

// TestSlideOrderSendsWholeSlides: the sampler sends each slide's rows
// together, every row once, before any slide repeats.
func TestSlideOrderSendsWholeSlides(t *testing.T) {
	ids := []string{"a", "b", "a", "c", "b", "a", "c", "c", "c"}
	so, err := NewSlideOrder(ids)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	seen := map[int]bool{}
	var got []string
	for range len(ids) {
		i := so.Next(r)
		if seen[i] {
			t.Fatalf("row %d sent twice in one pass", i)
		}
		seen[i] = true
		got = append(got, ids[i])
	}
	runs := 1
	for i := 1; i < len(got); i++ {
		if got[i] != got[i-1] {
			runs++
		}
	}
	if runs != 3 {
		t.Errorf("slides sent as %v: want each slide's rows together (3 runs), got %d runs", got, runs)
	}
	if _, err := NewSlideOrder(nil); err == nil {
		t.Error("no slide ids: want an error")
	}
}
