package daemon

import (
	"context"

	"github.com/scopewatch/scopewatch/inference"
)

// segmentedFields runs inference.AnalyzeField: decode, segment into red
// cells (white cells excluded), classify every cell. The segmentation runs
// with inference's defaults: the configuration has no segmentation settings,
// because the shipped model's operating point was chosen on cells cut with
// exactly those.
type segmentedFields struct {
	clf *inference.Classifier
}

var _ fieldAnalyzer = (*segmentedFields)(nil)

func newFieldAnalyzer(clf *inference.Classifier) fieldAnalyzer {
	return &segmentedFields{clf: clf}
}

func (f *segmentedFields) AnalyzeField(ctx context.Context, data []byte) (int, int, []fieldCell, error) {
	an, err := inference.AnalyzeField(ctx, f.clf, data, inference.SegmentOptions{})
	if err != nil {
		return 0, 0, nil, err
	}
	cells := make([]fieldCell, len(an.Cells))
	for i, c := range an.Cells {
		cells[i] = fieldCell{Box: c.Box, P: c.PParasitized, Focus: c.Focus, Appearance: c.Appearance, Features: c.Features}
	}
	return an.Width, an.Height, cells, nil
}
