package tuning

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// HistogramsFile is the name, inside a trial's folder, of the per-layer
// weight histograms a trainer may write; the report draws them for the best
// trial. The built-in head trainer writes it; a command trainer may too.
const HistogramsFile = "histograms.json"

// Histograms are the per-layer weight histograms of one trial over its
// epochs, the seed article's check that no layer's weights collapse or
// explode while the head trains.
type Histograms struct {
	Layers []LayerHistograms `json:"layers"`
}

// LayerHistograms is one layer's weight histogram after each epoch.
type LayerHistograms struct {
	Name   string           `json:"name"`
	Epochs []EpochHistogram `json:"epochs"`
}

// EpochHistogram is one histogram: len(Edges) == len(Counts)+1.
type EpochHistogram struct {
	Epoch  int       `json:"epoch"`
	Edges  []float64 `json:"edges"`
	Counts []int     `json:"counts"`
}

// Histogram bins values into bins equal-width bins over their range.
func Histogram(epoch int, values []float64, bins int) EpochHistogram {
	h := EpochHistogram{Epoch: epoch, Edges: make([]float64, bins+1), Counts: make([]int, bins)}
	if len(values) == 0 || bins < 1 {
		return h
	}
	lo, hi := values[0], values[0]
	for _, v := range values {
		lo, hi = min(lo, v), max(hi, v)
	}
	if hi == lo {
		lo, hi = lo-0.5, hi+0.5
	}
	w := (hi - lo) / float64(bins)
	for i := range h.Edges {
		h.Edges[i] = lo + w*float64(i)
	}
	h.Edges[bins] = hi
	for _, v := range values {
		b := int((v - lo) / w)
		h.Counts[min(max(b, 0), bins-1)]++
	}
	return h
}

// Validate checks the shape of every histogram, so that the report does not
// draw a file a trainer got wrong.
func (h Histograms) Validate() error {
	for _, l := range h.Layers {
		for _, e := range l.Epochs {
			if len(e.Edges) != len(e.Counts)+1 {
				return fmt.Errorf("layer %q epoch %d: %d edges for %d counts, want counts+1", l.Name, e.Epoch, len(e.Edges), len(e.Counts))
			}
		}
	}
	return nil
}

// WriteHistograms writes h to dir/HistogramsFile.
func WriteHistograms(dir string, h Histograms) error {
	data, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("histograms: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, HistogramsFile), data, 0o644); err != nil {
		return fmt.Errorf("histograms: %w", err)
	}
	return nil
}

// ReadHistograms reads dir/HistogramsFile; a missing file is os.ErrNotExist
// (wrapped), which callers treat as "this trainer writes none".
func ReadHistograms(dir string) (Histograms, error) {
	var h Histograms
	data, err := os.ReadFile(filepath.Join(dir, HistogramsFile))
	if err != nil {
		return h, fmt.Errorf("histograms: %w", err)
	}
	if err := json.Unmarshal(data, &h); err != nil {
		return h, fmt.Errorf("histograms %s: %w", filepath.Join(dir, HistogramsFile), err)
	}
	if err := h.Validate(); err != nil {
		return h, fmt.Errorf("histograms %s: %w", filepath.Join(dir, HistogramsFile), err)
	}
	return h, nil
}
