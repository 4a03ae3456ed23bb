package daemon

import (
	"context"

	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/config"
)

// segmentedFields runs inference.AnalyzeField: decode, segment into red
// cells (white cells excluded), classify every cell.
type segmentedFields struct {
	clf  *inference.Classifier
	opts inference.SegmentOptions
}

var _ fieldAnalyzer = (*segmentedFields)(nil)

func newFieldAnalyzer(clf *inference.Classifier, cfg config.Config) fieldAnalyzer {
	return &segmentedFields{clf: clf}
}

func (f *segmentedFields) AnalyzeField(ctx context.Context, data []byte) (int, int, []fieldCell, error) {
	an, err := inference.AnalyzeField(ctx, f.clf, data, f.opts)
	if err != nil {
		return 0, 0, nil, err
	}
	cells := make([]fieldCell, len(an.Cells))
	for i, c := range an.Cells {
		cells[i] = fieldCell{Box: c.Box, P: c.PParasitized, Focus: c.Focus}
	}
	return an.Width, an.Height, cells, nil
}
