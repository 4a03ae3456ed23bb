package rollout

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/labelset"
)

// ErrGoldenFailed: a candidate scored below a floor on the golden set.
var ErrGoldenFailed = errors.New("candidate below the golden-set floor")

// Default golden-set floors: the accuracy and sensitivity a retune must
// reach on the shifted domain's unseen slides. A candidate that cannot
// reach them on the device's own labelled cells must not count a
// patient's.
const (
	DefaultGoldenAccuracy    = 0.97
	DefaultGoldenSensitivity = 0.95
)

// Scorer classifies images at the model's threshold
// (*inference.Classifier).
type Scorer interface {
	Stream(ctx context.Context, n int, input func(i int) inference.Input, out func(inference.Result)) error
}

var _ Scorer = (*inference.Classifier)(nil)

// Golden is a labelled folder on the device and the floors a candidate
// must reach on it.
type Golden struct {
	// Dir holds labels.csv (path,label[,slide]) and the images.
	Dir            string
	MinAccuracy    float64 // 0: DefaultGoldenAccuracy
	MinSensitivity float64 // 0: DefaultGoldenSensitivity
}

// GoldenResult is a model's score on the golden set, the evidence a
// refusal or a promotion reports.
type GoldenResult struct {
	Model       string  `json:"model"`
	Images      int     `json:"images"`
	Positives   int     `json:"positives"`
	Accuracy    float64 `json:"accuracy"`
	Sensitivity float64 `json:"sensitivity"`
	Specificity float64 `json:"specificity"`
	// Failed counts images the model could not classify; each counts as
	// wrong.
	Failed int `json:"failed"`
}

// Check scores model (its version in the result) on the golden set. It
// returns the result and, when a floor is not met, an error wrapping
// ErrGoldenFailed that names it.
func (g Golden) Check(ctx context.Context, model string, s Scorer) (GoldenResult, error) {
	res := GoldenResult{Model: model}
	rows, _, err := labelset.ReadCSV(filepath.Join(g.Dir, "labels.csv"))
	if err != nil {
		return res, fmt.Errorf("rollout: golden set: %w", err)
	}
	var pos, neg int
	for _, r := range rows {
		if r.Positive {
			pos++
		} else {
			neg++
		}
	}
	if pos == 0 || neg == 0 {
		return res, fmt.Errorf("rollout: golden set %s: %d parasitized and %d uninfected images: it needs both to measure sensitivity and specificity", g.Dir, pos, neg)
	}
	var tp, tn int
	err = s.Stream(ctx, len(rows), func(i int) inference.Input { return inference.Input{Path: rows[i].Path} }, func(x inference.Result) {
		if x.Err != nil {
			res.Failed++
			return
		}
		switch said := x.Label == "parasitized"; {
		case said && rows[x.Index].Positive:
			tp++
		case !said && !rows[x.Index].Positive:
			tn++
		}
	})
	if err != nil {
		return res, fmt.Errorf("rollout: golden set: %w", err)
	}
	res.Images, res.Positives = len(rows), pos
	res.Accuracy = float64(tp+tn) / float64(len(rows))
	res.Sensitivity, res.Specificity = float64(tp)/float64(pos), float64(tn)/float64(neg)
	minAcc, minSens := g.MinAccuracy, g.MinSensitivity
	if minAcc == 0 {
		minAcc = DefaultGoldenAccuracy
	}
	if minSens == 0 {
		minSens = DefaultGoldenSensitivity
	}
	switch {
	case res.Accuracy < minAcc:
		return res, fmt.Errorf("%w: %s: accuracy %.4f on %d golden images, the floor is %.4f", ErrGoldenFailed, model, res.Accuracy, res.Images, minAcc)
	case res.Sensitivity < minSens:
		return res, fmt.Errorf("%w: %s: sensitivity %.4f on %d parasitized golden images, the floor is %.4f", ErrGoldenFailed, model, res.Sensitivity, pos, minSens)
	}
	return res, nil
}
