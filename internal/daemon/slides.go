package daemon

import (
	"fmt"
	"math"
	"time"

	"github.com/scopewatch/scopewatch/drift"
	"github.com/scopewatch/scopewatch/internal/config"
)

// slideSummary is the per-slide result: the payload of the MQTT result
// message (DESIGN.md §3) and of GET /v1/slides/{id}.
type slideSummary struct {
	Schema string `json:"schema"`
	ID     string `json:"id"`
	Site   string `json:"site"`
	Device string `json:"device"`
	Slide  string `json:"slide"`
	State  string `json:"state"`
	// Verdict is ok, flagged (counted while a drift episode was open:
	// the number stands, with that caveat) or inconclusive (no
	// parasitemia is given); Reasons say why it is not ok.
	Verdict      string   `json:"verdict"`
	Reasons      []string `json:"reasons,omitempty"`
	Images       int      `json:"images"`
	Refused      int      `json:"refused_images"`
	Fields       int      `json:"fields"`
	SparseFields int      `json:"sparse_fields"`
	Cells        int      `json:"cells"`
	Infected     int      `json:"infected"`
	// The parasitemia and its interval are absent when inconclusive.
	ParasitemiaPct *float64 `json:"parasitemia_pct,omitempty"`
	CILowPct       *float64 `json:"ci_low_pct,omitempty"`
	CIHighPct      *float64 `json:"ci_high_pct,omitempty"`
	CIMethod       string   `json:"ci_method"`
	CILevel        float64  `json:"ci_level"`
	StoppingReason string   `json:"stopping_reason,omitempty"`
	// Estimate is the label-free performance estimate of the slide's
	// cells, absent without a drift baseline for the model that counted
	// them.
	Estimate *slideEstimate `json:"estimate,omitempty"`
	// Quality is the slide quality gate's finding, absent without a
	// reference for the model that counted the slide.
	Quality      *slideQuality `json:"quality,omitempty"`
	ModelVersion string        `json:"model_version"`
	StartedAt    time.Time     `json:"started_at"`
	CompletedAt  time.Time     `json:"completed_at,omitempty"`
	Boot         int64         `json:"boot"`
}

const resultSchema = "scopewatch.result/v1"

// slideQuality is the slide quality gate's finding: whether the slide's
// stain, brightness, sharpness and framing were judged against the
// reference slides (NotJudged says why not) and which checks it failed.
// A failed check is an operator's matter, reported with the slide and in
// an alert; it does not touch the drift monitor.
type slideQuality struct {
	Judged    bool                `json:"judged"`
	NotJudged string              `json:"not_judged,omitempty"`
	Cells     int                 `json:"cells"`
	Flags     []drift.QualityFlag `json:"flags,omitempty"`
}

// judgeQuality runs the gate q on a completed slide.
func judgeQuality(q *drift.SlideQuality, sl slideRow) *slideQuality {
	out := &slideQuality{Cells: sl.Appearance.Cells}
	switch {
	case sl.Fields > 0:
		out.NotJudged = "a slide of fields: the reference is made of crops"
	case sl.Appearance.Cells < drift.MinQualityCells:
		out.NotJudged = fmt.Sprintf("%d crops measured; the gate needs at least %d", sl.Appearance.Cells, drift.MinQualityCells)
	default:
		out.Flags, out.Judged = q.Check(sl.Slide, sl.Appearance)
		if !out.Judged {
			out.NotJudged = "the crops lack the statistics the reference reads"
		}
	}
	return out
}

// slideEstimate is drift.SlideEstimate as JSON: what the calibrated
// probabilities say the slide's accuracy, sensitivity and specificity are,
// each with its standard error (the spread a slide of this size gives);
// sensitivity or specificity is absent when the slide has no expected
// cells of that class.
type slideEstimate struct {
	Cells         int      `json:"cells"`
	Accuracy      float64  `json:"accuracy"`
	AccuracySE    float64  `json:"accuracy_se"`
	Sensitivity   *float64 `json:"sensitivity,omitempty"`
	SensitivitySE *float64 `json:"sensitivity_se,omitempty"`
	Specificity   *float64 `json:"specificity,omitempty"`
	SpecificitySE *float64 `json:"specificity_se,omitempty"`
}

func newSlideEstimate(e drift.SlideEstimate) *slideEstimate {
	if e.Cells == 0 || math.IsNaN(e.Accuracy) {
		return nil
	}
	finite := func(v float64) *float64 {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil
		}
		return &v
	}
	out := &slideEstimate{Cells: e.Cells, Accuracy: e.Accuracy, AccuracySE: e.AccuracySE,
		Sensitivity: finite(e.Sensitivity), SensitivitySE: finite(e.SensitivitySE),
		Specificity: finite(e.Specificity), SpecificitySE: finite(e.SpecificitySE)}
	if out.Sensitivity == nil || out.SensitivitySE == nil {
		out.Sensitivity, out.SensitivitySE = nil, nil
	}
	if out.Specificity == nil || out.SpecificitySE == nil {
		out.Specificity, out.SpecificitySE = nil, nil
	}
	return out
}

// Slide verdicts.
const (
	verdictOK           = "ok"
	verdictFlagged      = "flagged"
	verdictInconclusive = "inconclusive"
)

// slideVerdict judges whether a slide's count can be reported: a
// parasitemia needs enough counted cells to mean something, and images
// that were mostly refused or fields mostly empty say the slide was not
// what the model can judge, whatever the cells counted say.
func slideVerdict(sl slideRow, cfg config.Slides) (string, []string) {
	var reasons []string
	if sl.Cells < cfg.MinCells {
		reasons = append(reasons, fmt.Sprintf("counted %d red cells; a parasitemia needs at least %d (slides.min_cells)", sl.Cells, cfg.MinCells))
	}
	if seen := sl.Images + sl.Refused; seen > 0 && float64(sl.Refused) > cfg.MaxRefusedShare*float64(seen) {
		reasons = append(reasons, fmt.Sprintf("%d of %d images were refused (not a plausible cell or field, or unreadable)", sl.Refused, seen))
	}
	if sl.Fields > 0 && float64(sl.SparseFields) > cfg.MaxRefusedShare*float64(sl.Fields) {
		reasons = append(reasons, fmt.Sprintf("%d of %d fields had fewer than %d cells (blank, out of focus or not a smear)", sl.SparseFields, sl.Fields, cfg.MinFieldCells))
	}
	if len(reasons) > 0 {
		return verdictInconclusive, reasons
	}
	if sl.Flagged != "" {
		return verdictFlagged, []string{"counted while " + sl.Flagged + " was open"}
	}
	return verdictOK, nil
}

// proportionCI returns the two-sided 95% interval for k successes in n
// trials, as fractions. method is "wilson" or "clopper-pearson".
func proportionCI(k, n int, method string) (lo, hi float64) {
	if n <= 0 {
		return 0, 1
	}
	if method == "clopper-pearson" {
		return clopperPearson(k, n, 0.05)
	}
	return wilson(k, n, 1.959963984540054)
}

// wilson is the Wilson score interval: well-behaved at the small
// proportions of parasitemia (a few per cent of 1000 cells), unlike the
// normal approximation.
func wilson(k, n int, z float64) (lo, hi float64) {
	nf := float64(n)
	p := float64(k) / nf
	z2 := z * z
	den := 1 + z2/nf
	centre := (p + z2/(2*nf)) / den
	half := z / den * math.Sqrt(p*(1-p)/nf+z2/(4*nf*nf))
	lo, hi = math.Max(0, centre-half), math.Min(1, centre+half)
	if k == 0 {
		lo = 0
	}
	if k == n {
		hi = 1
	}
	return lo, hi
}

// clopperPearson is the exact interval, found by bisection on the binomial
// tail probabilities (slides are summarised rarely; n is at most a few
// tens of thousands, so the O(n) tail sum is cheap enough).
func clopperPearson(k, n int, alpha float64) (lo, hi float64) {
	if k > 0 {
		// lo: P(X >= k | p) = alpha/2
		lo = bisect(func(p float64) float64 { return binomUpperTail(k, n, p) - alpha/2 })
	}
	hi = 1
	if k < n {
		// hi: P(X <= k | p) = alpha/2, i.e. 1 - P(X >= k+1) = alpha/2
		hi = bisect(func(p float64) float64 { return alpha/2 - (1 - binomUpperTail(k+1, n, p)) })
	}
	return lo, hi
}

// bisect finds the root of an increasing f on (0, 1).
func bisect(f func(float64) float64) float64 {
	a, b := 0.0, 1.0
	for i := 0; i < 100; i++ {
		m := (a + b) / 2
		if f(m) < 0 {
			a = m
		} else {
			b = m
		}
	}
	return (a + b) / 2
}

// binomUpperTail is P(X >= k) for X ~ Binomial(n, p), summed in log space.
func binomUpperTail(k, n int, p float64) float64 {
	if k <= 0 {
		return 1
	}
	if k > n {
		return 0
	}
	if p <= 0 {
		return 0
	}
	if p >= 1 {
		return 1
	}
	lp, lq := math.Log(p), math.Log1p(-p)
	lgn, _ := math.Lgamma(float64(n + 1))
	sum := 0.0
	for i := k; i <= n; i++ {
		a, _ := math.Lgamma(float64(i + 1))
		b, _ := math.Lgamma(float64(n - i + 1))
		sum += math.Exp(lgn - a - b + float64(i)*lp + float64(n-i)*lq)
	}
	return math.Min(1, sum)
}
