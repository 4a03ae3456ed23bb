package drift

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"
)

var qualityNames = []string{"background", "mean_r", "mean_g", "mean_b", "saturation", "sharpness", "focus"}

// qualitySlides draws slides of cells whose statistics share a slide
// effect (normal, correlated between the colour channels as a stain's
// intensity moves them together) plus cell noise. shift is added to every
// cell's statistics of the slides it is given for.
func qualitySlides(slides, cells int, seed uint64, shift map[string]float64) ([][]float64, []string) {
	r := newRand(seed, 3)
	var stats [][]float64
	var ids []string
	for s := range slides {
		intensity := r.NormFloat64() * 8 // moves R, G, B together
		hue := r.NormFloat64() * 2       // moves B against R
		eff := []float64{
			0.33 + 0.01*r.NormFloat64(),
			185 + intensity + hue,
			120 + intensity,
			138 + intensity - hue,
			0.35 + 0.02*r.NormFloat64(),
			1.5 + 0.15*r.NormFloat64(),
			40 * math.Exp(0.2*r.NormFloat64()),
		}
		id := fmt.Sprintf("s%d-%d", seed, s)
		for range cells {
			row := []float64{
				eff[0] + 0.04*r.NormFloat64(),
				eff[1] + 12*r.NormFloat64(),
				eff[2] + 12*r.NormFloat64(),
				eff[3] + 12*r.NormFloat64(),
				eff[4] + 0.05*r.NormFloat64(),
				eff[5] + 0.3*r.NormFloat64(),
				eff[6] * math.Exp(0.3*r.NormFloat64()),
			}
			for k, n := range qualityNames {
				row[k] += shift[n]
			}
			stats = append(stats, row)
			ids = append(ids, id)
		}
	}
	return stats, ids
}

func appearanceOf(stats [][]float64, ids []string) (map[string]SlideAppearance, []string) {
	out := map[string]SlideAppearance{}
	var order []string
	for i, id := range ids {
		a, ok := out[id]
		if !ok {
			order = append(order, id)
		}
		a.Add(qualityNames, stats[i])
		out[id] = a
	}
	return out, order
}

// flagRate checks every slide and returns the share flagged and the flags
// by check.
func flagRate(t *testing.T, q *SlideQuality, stats [][]float64, ids []string) (float64, map[string]int, []QualityFlag) {
	t.Helper()
	apps, order := appearanceOf(stats, ids)
	byCheck := map[string]int{}
	var flagged int
	var all []QualityFlag
	for _, id := range order {
		flags, judged := q.Check(id, apps[id])
		if !judged {
			t.Fatalf("slide %s of %d cells not judged", id, apps[id].Cells)
		}
		if len(flags) > 0 {
			flagged++
		}
		for _, f := range flags {
			byCheck[f.Check]++
		}
		all = append(all, flags...)
	}
	return float64(flagged) / float64(len(order)), byCheck, all
}

// TestSlideQualityGate: made from 80 reference slides, the gate flags new
// nominal slides at about its target rate, whatever their size (the
// within-slide noise of a short slide is allowed for), and flags a slide
// shifted well beyond the between-slide spread by the check that reads the
// shifted statistic, saying which way.
func TestSlideQualityGate(t *testing.T) {
	stats, ids := qualitySlides(80, 200, 1, nil)
	q, err := BuildSlideQuality(qualityNames, stats, ids, SlideQualityConfig{FalseFlag: 0.02})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range q.Checks {
		names = append(names, c.Name)
	}
	if got := strings.Join(names, ","); got != "stain,brightness,sharpness,framing" {
		t.Fatalf("checks %s, want stain, brightness, sharpness, framing", got)
	}
	if q.ReferenceFlagged > 0.08 {
		t.Errorf("reference slides flagged leaving each out: %.3f, want about 0.02", q.ReferenceFlagged)
	}
	for _, cells := range []int{30, 200, 1000} {
		s, i := qualitySlides(2000, cells, uint64(10+cells), nil)
		rate, by, _ := flagRate(t, q, s, i)
		t.Logf("nominal slides of %d cells: %.4f flagged (target 0.02), by check %v", cells, rate, by)
		if rate > 0.04 || rate < 0.005 {
			t.Errorf("nominal slides of %d cells: %.4f flagged, want about 0.02", cells, rate)
		}
	}
	cases := []struct {
		name, check, dir string
		shift            map[string]float64
	}{
		{"blurred", "sharpness", "below", map[string]float64{"sharpness": -1}},
		{"hue", "stain", "", map[string]float64{"mean_r": 15, "mean_b": -15}},
		{"bright", "brightness", "above", map[string]float64{"mean_r": 45, "mean_g": 45, "mean_b": 45}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, i := qualitySlides(200, 200, 50, tc.shift)
			rate, by, flags := flagRate(t, q, s, i)
			if rate < 0.95 || by[tc.check] < 190 {
				t.Fatalf("flagged %.3f, by check %v: want >= 95%% by %s", rate, by, tc.check)
			}
			for _, f := range flags {
				if f.Check != tc.check {
					continue
				}
				if tc.dir != "" && f.Direction != tc.dir {
					t.Fatalf("flag %+v: want direction %s", f, tc.dir)
				}
				if !strings.Contains(f.Message, "slide s50-") || !strings.Contains(f.Message, tc.check) || !(f.Distance > f.Limit) {
					t.Fatalf("message %q (distance %v, limit %v) does not name the slide and check", f.Message, f.Distance, f.Limit)
				}
				break
			}
		})
	}
}

func TestSlideQualityRefusesWhatItCannotJudge(t *testing.T) {
	stats, ids := qualitySlides(10, 200, 1, nil)
	if _, err := BuildSlideQuality(qualityNames, stats, ids, SlideQualityConfig{}); !errors.Is(err, ErrNoSlideQuality) {
		t.Fatalf("10 reference slides: %v, want ErrNoSlideQuality", err)
	}
	stats, ids = qualitySlides(40, 200, 1, nil)
	if _, err := BuildSlideQuality([]string{"a", "b", "c", "d", "e", "f", "g"}, stats, ids, SlideQualityConfig{}); !errors.Is(err, ErrNoSlideQuality) {
		t.Fatalf("no known statistic: %v, want ErrNoSlideQuality", err)
	}
	q, err := BuildSlideQuality(qualityNames, stats, ids, SlideQualityConfig{})
	if err != nil {
		t.Fatal(err)
	}
	short, sids := qualitySlides(1, MinQualityCells-1, 7, map[string]float64{"sharpness": -5})
	apps, _ := appearanceOf(short, sids)
	if flags, judged := q.Check(sids[0], apps[sids[0]]); judged || flags != nil {
		t.Fatalf("a slide of %d cells: judged %v, flags %v; want not judged", MinQualityCells-1, judged, flags)
	}
	// A slide without the sharpness statistics is judged on the rest.
	var a SlideAppearance
	for _, row := range short {
		a.Add(qualityNames[:5], row[:5])
	}
	a.Add(qualityNames[:5], short[0][:5])
	if flags, _ := q.Check("x", a); len(flags) != 0 {
		t.Fatalf("a nominal slide without sharpness flagged: %+v", flags)
	}
	if _, judged := q.Check("x", a); !judged {
		t.Fatalf("a slide without sharpness: not judged on its colour")
	}
	a.Add(qualityNames[:5], []float64{math.NaN(), 1, 1, 1, 1})
	if a.Cells != MinQualityCells {
		t.Fatalf("a cell with a NaN statistic counted: %d cells", a.Cells)
	}
}

// The gate's reference travels in the baseline and survives a save and
// load; a damaged one is refused.
func TestSlideQualityInBaseline(t *testing.T) {
	stats, ids := qualitySlides(30, 60, 1, nil)
	scores := make([]float64, len(stats))
	labels := make([]int, len(stats))
	r := newRand(4, 4)
	for i := range scores {
		labels[i] = i % 2
		scores[i] = math.Min(1, math.Max(0, 0.2+0.6*float64(labels[i])+0.1*r.NormFloat64()))
	}
	b, err := BuildBaseline(context.Background(), scores, labels, nil, 0.5, BaselineConfig{
		Seed: 5, BootstrapReps: 20, DescriptiveSims: 10, Slides: ids, MaxReference: len(scores),
		Appearance: stats, AppearanceNames: qualityNames,
		Detector: CalibrationConfig{ERT: 300, WarnERT: 100, Windows: []int{20, 100}, Sims: 100},
	})
	if err != nil {
		t.Fatal(err)
	}
	if b.SlideQuality == nil || b.SlideQuality.Slides != 30 {
		t.Fatalf("slide quality %+v, want one made of 30 slides", b.SlideQuality)
	}
	path := filepath.Join(t.TempDir(), "baseline.json")
	if err := b.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := LoadBaseline(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.SlideQuality == nil || got.SlideQuality.Checks[0].Limit != b.SlideQuality.Checks[0].Limit {
		t.Fatalf("slide quality after load: %+v", got.SlideQuality)
	}
	got.SlideQuality.Checks[0].Between = got.SlideQuality.Checks[0].Between[:1]
	if err := got.validate(); !errors.Is(err, ErrInvalidBaseline) {
		t.Fatalf("damaged slide quality: %v, want ErrInvalidBaseline", err)
	}
}
