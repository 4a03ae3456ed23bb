package drift

import (
	"fmt"
	"image/color"
	"io"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// PlotHistogram draws the live scores' histogram (outline) over the
// baseline's (filled), both as fractions of their counts on the same 20 bins
// of [0, 1], and writes it to w as format "png" or "svg".
func PlotHistogram(w io.Writer, format string, b *Baseline, live []float64, title string) error {
	if format != "png" && format != "svg" {
		return fmt.Errorf("plot format %q: want png or svg", format)
	}
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "p(parasitized)"
	p.Y.Label.Text = "fraction of cells"
	p.X.Min, p.X.Max = 0, 1
	mk := func(v []float64) *plotter.Histogram {
		h := histogram(v, scoreBins)
		n := max(float64(len(v)), 1)
		bins := make([]plotter.HistogramBin, scoreBins)
		for i := range bins {
			bins[i] = plotter.HistogramBin{Min: float64(i) / scoreBins, Max: float64(i+1) / scoreBins, Weight: h[i] / n}
		}
		return &plotter.Histogram{Bins: bins, Width: 1.0 / scoreBins, LineStyle: plotter.DefaultLineStyle}
	}
	base := mk(b.Scores)
	base.FillColor = color.NRGBA{R: 120, G: 120, B: 120, A: 140}
	base.LineStyle.Color = color.NRGBA{R: 90, G: 90, B: 90, A: 255}
	cur := mk(live)
	cur.FillColor = nil
	cur.LineStyle.Color = color.NRGBA{R: 200, G: 30, B: 30, A: 255}
	cur.LineStyle.Width = vg.Points(2)
	p.Add(base, cur)
	p.Legend.Add(fmt.Sprintf("baseline (%d)", len(b.Scores)), base)
	p.Legend.Add(fmt.Sprintf("live (%d)", len(live)), cur)
	p.Legend.Top = true
	p.Legend.Left = false
	wt, err := p.WriterTo(6*vg.Inch, 4*vg.Inch, format)
	if err != nil {
		return fmt.Errorf("render plot: %w", err)
	}
	if _, err := wt.WriteTo(w); err != nil {
		return fmt.Errorf("write plot: %w", err)
	}
	return nil
}
