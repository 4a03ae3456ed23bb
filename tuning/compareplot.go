package tuning

import (
	"fmt"
	"image/color"
	"math"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// PlotComparison is the file stem of the incumbent-against-new plot.
const PlotComparison = "incumbent-vs-new"

var (
	negColour = color.NRGBA{R: 60, G: 120, B: 200, A: 160}
	posColour = color.NRGBA{R: 200, G: 60, B: 60, A: 160}
)

// WritePlotComparison draws the incumbent and the new model on the same
// test cells into dir/PlotComparison.{png,svg}: each model's score
// histogram per true class with its threshold, and both ROC curves. A
// histogram shows what a single accuracy hides: where the errors sit, and
// how far from the threshold the classes are.
func WritePlotComparison(dir string, pNew, pOld []float64, y []int, tNew, tOld float64, title string) (PlotSummary, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return PlotSummary{}, fmt.Errorf("plot: %w", err)
	}
	hist := func(p []float64, t float64, name string) (*plot.Plot, error) {
		pl := plot.New()
		pl.Title.Text = name
		pl.X.Label.Text = "p(parasitized)"
		pl.Y.Label.Text = "cells"
		pl.X.Min, pl.X.Max = 0, 1
		for _, cls := range []struct {
			label int
			name  string
			c     color.Color
		}{{0, "uninfected", negColour}, {1, "parasitized", posColour}} {
			var v plotter.Values
			for i, s := range p {
				if y[i] == cls.label {
					v = append(v, s)
				}
			}
			if len(v) == 0 {
				continue
			}
			h, err := plotter.NewHist(v, 40)
			if err != nil {
				return nil, err
			}
			h.FillColor = cls.c
			h.LineStyle.Width = 0
			pl.Add(h)
			pl.Legend.Add(cls.name, h)
		}
		tl, err := plotter.NewLine(plotter.XYs{{X: t, Y: 0}, {X: t, Y: float64(len(p))}})
		if err != nil {
			return nil, err
		}
		tl.Color = darkGrey
		tl.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		pl.Add(tl)
		pl.Legend.Add(fmt.Sprintf("threshold %.3f", t), tl)
		pl.Legend.Top = true
		pl.Legend.XOffs = -vg.Millimeter * 8
		// Most cells sit at the ends; a log axis would hide the empty
		// middle, so the counts are clipped to show the overlap instead.
		pl.Y.Max = float64(len(p)) / 8
		return pl, nil
	}
	hOld, err := hist(pOld, tOld, "incumbent")
	if err != nil {
		return PlotSummary{}, fmt.Errorf("plot %s: %w", PlotComparison, err)
	}
	hNew, err := hist(pNew, tNew, "new")
	if err != nil {
		return PlotSummary{}, fmt.Errorf("plot %s: %w", PlotComparison, err)
	}
	const rocMaxFPR = 0.2
	lowest := 1.0
	roc := plot.New()
	roc.Title.Text = "ROC on the test split"
	roc.X.Label.Text = "false-positive rate"
	roc.Y.Label.Text = "true-positive rate"
	// Both models are usually near the corner; the full square would draw
	// them as one line.
	roc.X.Min, roc.X.Max, roc.Y.Min, roc.Y.Max = 0, rocMaxFPR, 0, 1
	for _, m := range []struct {
		name string
		p    []float64
		c    color.Color
	}{{"incumbent", pOld, grey}, {"new", pNew, color.NRGBA{R: 30, G: 110, B: 60, A: 255}}} {
		fpr, tpr := ROC(m.p, y)
		var xys plotter.XYs
		for i := range fpr {
			if fpr[i] > rocMaxFPR {
				// The segment up to the edge, then stop.
				xys = append(xys, plotter.XY{X: rocMaxFPR, Y: tpr[i-1] + (tpr[i]-tpr[i-1])*(rocMaxFPR-fpr[i-1])/(fpr[i]-fpr[i-1])})
				break
			}
			xys = append(xys, plotter.XY{X: fpr[i], Y: tpr[i]})
		}
		for _, xy := range xys {
			lowest = math.Min(lowest, xy.Y)
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return PlotSummary{}, fmt.Errorf("plot %s: %w", PlotComparison, err)
		}
		l.Color = m.c
		l.Width = vg.Points(1.5)
		roc.Add(l)
		roc.Legend.Add(m.name, l)
	}
	roc.Y.Min = math.Max(0, math.Floor((lowest-0.02)*20)/20)
	roc.Legend.Top = false
	roc.Legend.Left = false
	s := PlotSummary{Name: PlotComparison, Title: title,
		Caption: "Score histograms per true class on the sealed test split (counts clipped at 1/8 of the cells to show the overlap), with each model's threshold, and both ROC curves up to a false-positive rate of 0.2.",
		Series:  2, Bars: 4, Panels: 3}
	if err := render(dir, PlotComparison, 27*vg.Centimeter, 9*vg.Centimeter, grid([][]*plot.Plot{{hOld, hNew, roc}})); err != nil {
		return PlotSummary{}, err
	}
	return s, nil
}
