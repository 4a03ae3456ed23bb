package tuning

import (
	"cmp"
	"errors"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/palette"
	"gonum.org/v1/plot/palette/moreland"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Plot names, the file stems in DIR/plots; an isolation plot is
// PlotIsolation + "-" + the scientific parameter's name.
const (
	PlotCurves     = "curves"
	PlotHistograms = "histograms"
	PlotParallel   = "parallel"
	PlotHistory    = "history"
	PlotIsolation  = "isolation"
	PlotImportance = "importance"
	PlotFinalists  = "finalists"
)

// PlotSummary says what one plot drew, so that a test or the command line
// can tell an empty plot from a full one.
type PlotSummary struct {
	// Name is the file stem: the plot is plots/Name.png and plots/Name.svg.
	Name    string `json:"name"`
	Title   string `json:"title"`
	Caption string `json:"caption"`
	// Series counts the lines or point sets drawn, Bars the bars, Panels
	// the sub-plots.
	Series int `json:"series"`
	Bars   int `json:"bars"`
	Panels int `json:"panels"`
}

// Files returns the plot's files relative to the study folder.
func (p PlotSummary) Files() []string {
	return []string{"plots/" + p.Name + ".png", "plots/" + p.Name + ".svg"}
}

// plotFormats are written for every plot: PNG for the page, SVG to zoom.
var plotFormats = []string{"png", "svg"}

var (
	grey      = color.NRGBA{R: 150, G: 150, B: 150, A: 200}
	darkGrey  = color.NRGBA{R: 90, G: 90, B: 90, A: 255}
	phaseRank = map[string]int{"explore": 0, "exploit": 1, "replicate": 2}
)

// render draws one figure into out/name.png and out/name.svg.
func render(out, name string, w, h vg.Length, drawFig func(dc draw.Canvas)) error {
	for _, format := range plotFormats {
		c, err := draw.NewFormattedCanvas(w, h, format)
		if err != nil {
			return fmt.Errorf("plot %s: %w", name, err)
		}
		drawFig(draw.New(c))
		path := filepath.Join(out, name+"."+format)
		f, err := os.Create(path)
		if err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		if _, err := c.WriteTo(f); err != nil {
			f.Close()
			return fmt.Errorf("plot %s: %w", path, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("plot %s: %w", path, err)
		}
	}
	return nil
}

// grid draws plots in rows and columns with aligned axes.
func grid(plots [][]*plot.Plot) func(draw.Canvas) {
	return func(dc draw.Canvas) {
		t := draw.Tiles{Rows: len(plots), Cols: len(plots[0]), PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
			PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
		cs := plot.Align(plots, t, dc)
		for i := range plots {
			for j, p := range plots[i] {
				if p != nil {
					p.Draw(cs[i][j])
				}
			}
		}
	}
}

func single(p *plot.Plot) func(draw.Canvas) { return p.Draw }

// drawPlots draws every plot the analysis supports into out and records
// each in rep; a plot that cannot be drawn for lack of data is a note.
func drawPlots(rep *Report, dir, out string) error {
	a := rep.Analysis
	note := func(format string, args ...any) { rep.Notes = append(rep.Notes, fmt.Sprintf(format, args...)) }
	add := func(s PlotSummary, w, h vg.Length, fig func(draw.Canvas)) error {
		if err := render(out, s.Name, w, h, fig); err != nil {
			return err
		}
		rep.Plots = append(rep.Plots, s)
		return nil
	}
	steps := []func() error{
		func() error { return plotCurves(a, add, note) },
		func() error { return plotHistograms(a, dir, add, note) },
		func() error { return plotParallel(a, add, note) },
		func() error { return plotHistory(a, add, note) },
		func() error { return plotIsolation(a, add, note) },
		func() error { return plotImportance(a, add, note) },
		func() error { return plotFinalists(a, add, note) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

type addFunc func(s PlotSummary, w, h vg.Length, fig func(draw.Canvas)) error
type noteFunc func(format string, args ...any)

// epochX is an epoch line's position on the x axis: its "epoch" key, or its
// place in the trial's output.
func epochX(ep Epoch, i int) float64 {
	if e, ok := ep["epoch"]; ok {
		return e
	}
	return float64(i + 1)
}

// plotCurves draws the training curves of the top three trials: the seed
// article's first check, because one number hides overfitting, exploding
// gradients and stalls that the curves show.
func plotCurves(a *Analysis, add addFunc, note noteFunc) error {
	if len(a.Top) == 0 {
		note("no training curves: no search trial completed")
		return nil
	}
	metric := a.Study.Objective.Metric
	keys := []string{metric}
	for _, k := range []string{"train_loss", "val_loss"} {
		if k == metric {
			continue
		}
		for _, t := range a.Top {
			if slices.ContainsFunc(t.Epochs, func(ep Epoch) bool { _, ok := ep[k]; return ok }) {
				keys = append(keys, k)
				break
			}
		}
	}
	s := PlotSummary{Name: PlotCurves, Title: fmt.Sprintf("Training curves of the top %d trials", len(a.Top)), Panels: len(keys),
		Caption: "Each panel is one key the trials reported per epoch, one line per trial; a validation loss rising while the training loss falls is overfitting."}
	var rows [][]*plot.Plot
	for _, k := range keys {
		p := plot.New()
		p.Title.Text = k
		p.X.Label.Text = "epoch"
		p.Y.Label.Text = k
		p.Legend.Top = true
		for r, t := range a.Top {
			var xys plotter.XYs
			for i, ep := range t.Epochs {
				if v, ok := ep[k]; ok && !math.IsNaN(v) {
					xys = append(xys, plotter.XY{X: epochX(ep, i), Y: v})
				}
			}
			if len(xys) == 0 {
				continue
			}
			l, pts, err := plotter.NewLinePoints(xys)
			if err != nil {
				return fmt.Errorf("curves: trial %d %s: %w", t.Trial, k, err)
			}
			l.Color = plotutil.Color(r)
			l.Width = vg.Points(1.5)
			pts.Color = plotutil.Color(r)
			pts.Shape = plotutil.Shape(r)
			p.Add(l, pts)
			p.Legend.Add(fmt.Sprintf("trial %d (%s)", t.Trial, fmtValue(t.Value)), l, pts)
			s.Series++
		}
		rows = append(rows, []*plot.Plot{p})
	}
	return add(s, 6*vg.Inch, vg.Length(len(keys))*3*vg.Inch, grid(rows))
}

// spread picks the first, middle and last of n items.
func spread(n int) []int {
	var out []int
	for _, i := range []int{0, n / 2, n - 1} {
		if n > 0 && !slices.Contains(out, i) {
			out = append(out, i)
		}
	}
	return out
}

// plotHistograms draws the best trial's weight histograms per layer at its
// first, middle and last epoch: a layer that does not move, or whose weights
// spread out, shows here (the seed article's figures 3-5).
func plotHistograms(a *Analysis, dir string, add addFunc, note noteFunc) error {
	if a.Best == nil {
		return nil
	}
	tdir := filepath.Join(dir, "trials", fmt.Sprintf("%04d", a.Best.Trial))
	h, err := ReadHistograms(tdir)
	if errors.Is(err, os.ErrNotExist) {
		note("no weight histograms: the best trial (%d) wrote no %s", a.Best.Trial, HistogramsFile)
		return nil
	}
	if err != nil {
		// A trainer's broken file costs this plot, not the report.
		note("no weight histograms: %v", err)
		return nil
	}
	var panels []*plot.Plot
	s := PlotSummary{Name: PlotHistograms, Title: fmt.Sprintf("Weight histograms of the best trial (%d)", a.Best.Trial),
		Caption: "One panel per layer: the density of its weights after the first, middle and last epoch recorded (outlines, so that the epochs overlay); a layer whose histogram never moves is not learning, one that keeps widening may be exploding."}
	for _, l := range h.Layers {
		if len(l.Epochs) == 0 {
			continue
		}
		p := plot.New()
		p.Title.Text = l.Name
		p.X.Label.Text = "weight"
		p.Y.Label.Text = "density"
		p.Legend.Top = true
		for c, i := range spread(len(l.Epochs)) {
			e := l.Epochs[i]
			outline, err := histogramOutline(e)
			if err != nil {
				return fmt.Errorf("histograms: layer %s epoch %d: %w", l.Name, e.Epoch, err)
			}
			hist, err := plotter.NewLine(outline)
			if err != nil {
				return fmt.Errorf("histograms: layer %s epoch %d: %w", l.Name, e.Epoch, err)
			}
			hist.Color = plotutil.Color(c)
			hist.Width = vg.Points(1.5)
			hist.Dashes = plotutil.Dashes(c)
			p.Add(hist)
			p.Legend.Add(fmt.Sprintf("epoch %d", e.Epoch), hist)
			s.Series++
		}
		panels = append(panels, p)
	}
	if len(panels) == 0 {
		note("no weight histograms: the best trial's %s has no layer with an epoch", HistogramsFile)
		return nil
	}
	s.Panels = len(panels)
	cols := min(len(panels), 3)
	rows := (len(panels) + cols - 1) / cols
	g := make([][]*plot.Plot, rows)
	for r := range g {
		g[r] = make([]*plot.Plot, cols)
		for c := range g[r] {
			if k := r*cols + c; k < len(panels) {
				g[r][c] = panels[k]
			}
		}
	}
	return add(s, vg.Length(cols)*4*vg.Inch, vg.Length(rows)*3*vg.Inch, grid(g))
}

// histogramOutline is a histogram's outline as a density (share of the
// weights per unit of weight), so that epochs binned over different ranges
// compare.
func histogramOutline(e EpochHistogram) (plotter.XYs, error) {
	total := 0
	for _, n := range e.Counts {
		total += n
	}
	if total == 0 || len(e.Counts) == 0 {
		return nil, errors.New("empty histogram")
	}
	xys := plotter.XYs{{X: e.Edges[0], Y: 0}}
	for b, n := range e.Counts {
		w := e.Edges[b+1] - e.Edges[b]
		if !(w > 0) {
			return nil, fmt.Errorf("bin %d has width %g", b, w)
		}
		d := float64(n) / float64(total) / w
		xys = append(xys, plotter.XY{X: e.Edges[b], Y: d}, plotter.XY{X: e.Edges[b+1], Y: d})
	}
	return append(xys, plotter.XY{X: e.Edges[len(e.Edges)-1], Y: 0}), nil
}

// axisCoordinate places a parameter's value on its parallel axis: [0, 1]
// over the range (log scale for a log parameter), levels evenly spaced for
// a categorical one. ok is false when the value is missing or not of the
// parameter's kind.
func axisCoordinate(p Parameter, v any) (float64, bool) {
	if v == nil {
		return 0, false
	}
	if p.Type == TypeCategorical {
		for j, c := range p.Values {
			if sameValue(c, v) {
				return float64(j) / float64(max(len(p.Values)-1, 1)), true
			}
		}
		return 0, false
	}
	f, ok := number(v)
	if !ok {
		return 0, false
	}
	u := unitCoordinate(p, f)
	if math.IsNaN(u) {
		return 0, false
	}
	return math.Min(math.Max(u, 0), 1), true
}

// plotParallel draws every search trial as a polyline across the searched
// parameters, coloured by value, so that the region of the good trials (and
// of the failed ones) is seen at once.
func plotParallel(a *Analysis, add addFunc, note noteFunc) error {
	params := a.Study.Searched()
	var search []TrialResult
	for _, t := range a.Trials {
		if t.Search() {
			search = append(search, t)
		}
	}
	if len(search) == 0 {
		note("no parallel coordinates: the journal has no search trial")
		return nil
	}
	// Good is blue whatever the direction, so the eye reads every study's
	// plot the same way.
	var cmap palette.ColorMap = moreland.SmoothBlueRed()
	if a.Study.Objective.Direction == "maximize" {
		cmap = palette.Reverse(cmap)
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, t := range search {
		if t.State == StateComplete && !math.IsNaN(t.Value) {
			lo, hi = math.Min(lo, t.Value), math.Max(hi, t.Value)
		}
	}
	haveValues := !math.IsInf(lo, 0)
	if haveValues {
		if lo == hi {
			d := math.Max(math.Abs(lo)*0.01, 1e-9)
			lo, hi = lo-d, hi+d
		}
		cmap.SetMin(lo)
		cmap.SetMax(hi)
	}

	p := plot.New()
	p.Title.Text = "Parallel coordinates of the search trials"
	p.Y.Label.Text = "position in the range"
	// Headroom above the axes for the legend.
	p.Y.Min, p.Y.Max = 0, 1.15
	p.Y.Tick.Marker = plot.ConstantTicks{{Value: 0, Label: "min"}, {Value: 0.5}, {Value: 1, Label: "max"}}
	names := make([]string, len(params))
	for i, q := range params {
		names[i] = q.Name
		if q.Log {
			names[i] += " (log)"
		}
	}
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.3, float64(len(params)-1)+0.3

	// Axes and their scale labels first, so that the trials are drawn over
	// them.
	var lab plotter.XYLabels
	for i, q := range params {
		ax, err := plotter.NewLine(plotter.XYs{{X: float64(i), Y: 0}, {X: float64(i), Y: 1}})
		if err != nil {
			return fmt.Errorf("parallel: %w", err)
		}
		ax.Color = darkGrey
		p.Add(ax)
		if q.Type == TypeCategorical {
			for _, v := range q.Values {
				y, _ := axisCoordinate(q, v)
				lab.XYs = append(lab.XYs, plotter.XY{X: float64(i), Y: y})
				lab.Labels = append(lab.Labels, fmt.Sprint(v))
			}
			continue
		}
		lab.XYs = append(lab.XYs, plotter.XY{X: float64(i), Y: 0}, plotter.XY{X: float64(i), Y: 1})
		lab.Labels = append(lab.Labels, fmt.Sprintf("%g", *q.Min), fmt.Sprintf("%g", *q.Max))
	}
	labels, err := plotter.NewLabels(lab)
	if err != nil {
		return fmt.Errorf("parallel: %w", err)
	}
	labels.Offset = vg.Point{X: vg.Points(3)}
	for i := range labels.TextStyle {
		labels.TextStyle[i].Font.Size = vg.Points(8)
	}

	// Trials without a value go under the others, and the better complete
	// trials over the worse.
	order := slices.Clone(search)
	slices.SortStableFunc(order, func(x, y TrialResult) int {
		xc, yc := x.State == StateComplete, y.State == StateComplete
		switch {
		case xc != yc:
			if xc {
				return 1
			}
			return -1
		case a.Better(y.Value, x.Value):
			return -1
		case a.Better(x.Value, y.Value):
			return 1
		}
		return 0
	})
	s := PlotSummary{Name: PlotParallel, Title: "Parallel coordinates", Panels: 1,
		Caption: "One polyline per search trial across the searched parameters, each axis spanning its range (log parameters on a log scale, categorical levels evenly spaced); complete trials are coloured by value (blue is better, see the colour bar), failed, pruned and unfinished ones are grey and dashed."}
	var legendDone, legendOther bool
	for _, t := range order {
		var xys plotter.XYs
		for i, q := range params {
			y, ok := axisCoordinate(q, t.Params[q.Name])
			if !ok {
				xys = nil
				break
			}
			xys = append(xys, plotter.XY{X: float64(i), Y: y})
		}
		if len(xys) == 0 {
			continue
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return fmt.Errorf("parallel: trial %d: %w", t.Trial, err)
		}
		if t.State == StateComplete && haveValues {
			c, err := cmap.At(math.Min(math.Max(t.Value, lo), hi))
			if err != nil {
				return fmt.Errorf("parallel: trial %d colour: %w", t.Trial, err)
			}
			l.Color = c
			l.Width = vg.Points(1.5)
			if a.Best != nil && t.Trial == a.Best.Trial {
				l.Width = vg.Points(3)
			}
			if !legendDone {
				p.Legend.Add("complete (by value)", l)
				legendDone = true
			}
		} else {
			l.Color = grey
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			if !legendOther {
				p.Legend.Add("failed / pruned / unfinished", l)
				legendOther = true
			}
		}
		p.Add(l)
		if len(xys) == 1 {
			sc, err := plotter.NewScatter(xys)
			if err != nil {
				return fmt.Errorf("parallel: %w", err)
			}
			sc.Color = l.Color
			p.Add(sc)
		}
		s.Series++
	}
	p.Add(labels)
	p.Legend.Top = true

	w, h := 7*vg.Inch, 4*vg.Inch
	if !haveValues {
		return add(s, w, h, single(p))
	}
	bar := plot.New()
	bar.Add(&plotter.ColorBar{ColorMap: cmap, Vertical: true})
	bar.HideX()
	bar.Y.Label.Text = a.Study.Objective.Metric
	bar.Y.Min, bar.Y.Max = lo, hi
	return add(s, w, h, func(dc draw.Canvas) {
		width := dc.Max.X - dc.Min.X
		p.Draw(draw.Crop(dc, 0, -width*0.14, 0, 0))
		bar.Draw(draw.Crop(dc, width*0.88, 0, 0, 0))
	})
}

// plotHistory draws each complete trial's value by trial number, coloured by
// phase, and the best-so-far line of the search: a line still falling at
// the end says the budget ran out before the search converged.
func plotHistory(a *Analysis, add addFunc, note noteFunc) error {
	byPhase := map[string]plotter.XYs{}
	var best plotter.XYs
	bestV := math.NaN()
	last := 0
	for _, t := range a.Trials {
		if t.Search() {
			last = t.Trial
		}
		if t.State != StateComplete || math.IsNaN(t.Value) {
			continue
		}
		byPhase[t.Phase] = append(byPhase[t.Phase], plotter.XY{X: float64(t.Trial), Y: t.Value})
		if t.Search() && (math.IsNaN(bestV) || a.Better(t.Value, bestV)) {
			bestV = t.Value
			best = append(best, plotter.XY{X: float64(t.Trial), Y: bestV})
		}
	}
	if len(byPhase) == 0 {
		note("no optimisation history: no trial completed")
		return nil
	}
	phases := make([]string, 0, len(byPhase))
	for ph := range byPhase {
		phases = append(phases, ph)
	}
	slices.SortFunc(phases, func(x, y string) int {
		rx, okx := phaseRank[x]
		ry, oky := phaseRank[y]
		if !okx {
			rx = len(phaseRank)
		}
		if !oky {
			ry = len(phaseRank)
		}
		if rx != ry {
			return rx - ry
		}
		return cmp.Compare(x, y)
	})
	p := plot.New()
	p.Title.Text = "Optimisation history"
	p.X.Label.Text = "trial"
	p.Y.Label.Text = a.Study.Objective.Metric
	p.Legend.Top = true
	s := PlotSummary{Name: PlotHistory, Title: "Optimisation history", Panels: 1,
		Caption: "The value of every complete trial by trial number, coloured by phase, and the best search value so far (pruned and failed trials have no final value and are left out)."}
	for i, ph := range phases {
		sc, err := plotter.NewScatter(byPhase[ph])
		if err != nil {
			return fmt.Errorf("history: %w", err)
		}
		sc.Color = plotutil.Color(i)
		sc.Shape = plotutil.Shape(i)
		sc.Radius = vg.Points(3)
		p.Add(sc)
		p.Legend.Add(ph, sc)
		s.Series++
	}
	if len(best) > 0 {
		if float64(last) > best[len(best)-1].X {
			best = append(best, plotter.XY{X: float64(last), Y: bestV})
		}
		l, err := plotter.NewLine(best)
		if err != nil {
			return fmt.Errorf("history: %w", err)
		}
		l.StepStyle = plotter.PostStep
		l.Color = darkGrey
		l.Width = vg.Points(2)
		p.Add(l)
		p.Legend.Add("best so far", l)
		s.Series++
	}
	return add(s, 6*vg.Inch, 4*vg.Inch, single(p))
}

// plotIsolation draws, for each scientific parameter, the best value per
// scientific value (its nuisance parameters tuned for it) and the per-value
// best-so-far curves: the seed article's fair comparison of scientific
// values.
func plotIsolation(a *Analysis, add addFunc, note noteFunc) error {
	var order []string
	rows := map[string][]IsolationRow{}
	for _, r := range a.Isolation {
		if _, ok := rows[r.Parameter]; !ok {
			order = append(order, r.Parameter)
		}
		rows[r.Parameter] = append(rows[r.Parameter], r)
	}
	if len(order) == 0 {
		note("no isolation plot: the study has no scientific parameter")
		return nil
	}
	for _, name := range order {
		s := PlotSummary{Name: PlotIsolation + "-" + name, Title: "Isolation of " + name, Panels: 2,
			Caption: fmt.Sprintf("Left: the best %s per value of %s with the nuisance parameters tuned for that value (n = complete trials; grey bars have fewer than %d and are not to be compared). Right: each value's best so far over its trials.", a.Study.Objective.Metric, name, minIsolationTrials)}
		bars := plot.New()
		bars.Title.Text = "best per value of " + name
		bars.Y.Label.Text = a.Study.Objective.Metric
		curves := plot.New()
		curves.Title.Text = "best so far per value"
		curves.X.Label.Text = "trial"
		curves.Y.Label.Text = a.Study.Objective.Metric
		curves.Legend.Top = true
		var labels []string
		for i, r := range rows[name] {
			if r.Best == nil {
				continue
			}
			label := fmt.Sprintf("%s (n=%d)", r.Label, r.Complete)
			if r.Refusal != "" {
				label = fmt.Sprintf("%s (n=%d, too few)", r.Label, r.Complete)
			}
			labels = append(labels, label)
			b, err := plotter.NewBarChart(plotter.Values{r.Best.Value}, vg.Points(30))
			if err != nil {
				return fmt.Errorf("isolation %s: %w", name, err)
			}
			b.XMin = float64(len(labels) - 1)
			b.Color = plotutil.Color(i)
			if r.Refusal != "" {
				b.Color = grey
			}
			bars.Add(b)
			s.Bars++
			var xys plotter.XYs
			for _, bp := range r.BestSoFar {
				xys = append(xys, plotter.XY{X: float64(bp.Trial), Y: bp.Value})
			}
			l, pts, err := plotter.NewLinePoints(xys)
			if err != nil {
				return fmt.Errorf("isolation %s: %w", name, err)
			}
			l.StepStyle = plotter.PostStep
			l.Color, pts.Color = plotutil.Color(i), plotutil.Color(i)
			l.Width = vg.Points(1.5)
			pts.Shape = plotutil.Shape(i)
			curves.Add(l, pts)
			curves.Legend.Add(r.Label, l, pts)
			s.Series++
		}
		if len(labels) == 0 {
			note("no isolation plot for %s: none of its values has a complete trial", name)
			continue
		}
		bars.NominalX(labels...)
		bars.X.Min, bars.X.Max = -0.6, float64(len(labels))-0.4
		if err := add(s, 10*vg.Inch, 4*vg.Inch, grid([][]*plot.Plot{{bars, curves}})); err != nil {
			return err
		}
	}
	return nil
}

// plotImportance draws each searched parameter's share of the explained
// variance (the marginal estimate documented on Analyze).
func plotImportance(a *Analysis, add addFunc, note noteFunc) error {
	if len(a.Importance) == 0 {
		note("no importance plot: the importance was not estimated (see above)")
		return nil
	}
	vals := make(plotter.Values, len(a.Importance))
	names := make([]string, len(a.Importance))
	for i, im := range a.Importance {
		vals[i] = im.Share
		names[i] = im.Parameter
	}
	b, err := plotter.NewBarChart(vals, vg.Points(30))
	if err != nil {
		return fmt.Errorf("importance: %w", err)
	}
	b.Color = plotutil.Color(0)
	p := plot.New()
	p.Title.Text = "Parameter importance (marginal)"
	p.Y.Label.Text = "share of explained variance"
	p.Y.Min = 0
	p.Add(b)
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.6, float64(len(names))-0.4
	s := PlotSummary{Name: PlotImportance, Title: "Parameter importance", Bars: len(vals), Panels: 1,
		Caption: "The share of the variance of the complete trials' values that grouping the trials by each parameter alone explains beyond chance (ε²), normalised to sum to 1: a marginal estimate that ignores interactions."}
	return add(s, 6*vg.Inch, 4*vg.Inch, single(p))
}

// plotFinalists draws each finalist's mean ± standard deviation over its
// replicates, with the replicate values as points: a lucky search trial
// falls back here.
func plotFinalists(a *Analysis, add addFunc, note noteFunc) error {
	var fs []Finalist
	for _, f := range a.Finalists {
		if len(f.Values) > 0 {
			fs = append(fs, f)
		}
	}
	if len(fs) == 0 {
		if len(a.Finalists) > 0 {
			note("no finalists plot: no replicate completed")
		} else {
			note("no finalists plot: no replicates; the finalists were not rerun with other seeds")
		}
		return nil
	}
	vals := make(plotter.Values, len(fs))
	errs := make(plotter.YErrors, len(fs))
	xys := make(plotter.XYs, len(fs))
	var pts plotter.XYs
	names := make([]string, len(fs))
	for i, f := range fs {
		vals[i] = f.Mean
		sd := f.Std
		if math.IsNaN(sd) {
			sd = 0
		}
		errs[i] = struct{ Low, High float64 }{sd, sd}
		xys[i] = plotter.XY{X: float64(i), Y: f.Mean}
		names[i] = fmt.Sprintf("trial %d (n=%d)", f.Trial, len(f.Values))
		// Beside the error bar rather than on it.
		for _, v := range f.Values {
			pts = append(pts, plotter.XY{X: float64(i) + 0.25, Y: v})
		}
	}
	b, err := plotter.NewBarChart(vals, vg.Points(40))
	if err != nil {
		return fmt.Errorf("finalists: %w", err)
	}
	b.Color = color.NRGBA{R: 140, G: 170, B: 210, A: 255}
	eb, err := plotter.NewYErrorBars(struct {
		plotter.XYs
		plotter.YErrors
	}{xys, errs})
	if err != nil {
		return fmt.Errorf("finalists: %w", err)
	}
	eb.LineStyle.Width = vg.Points(1.5)
	eb.CapWidth = vg.Points(12)
	sc, err := plotter.NewScatter(pts)
	if err != nil {
		return fmt.Errorf("finalists: %w", err)
	}
	sc.Color = darkGrey
	p := plot.New()
	p.Title.Text = "Finalists over their replicates"
	p.Y.Label.Text = a.Study.Objective.Metric
	p.Add(b, eb, sc)
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.6, float64(len(names))-0.4
	top := 0.0
	for i, f := range fs {
		top = math.Max(top, f.Mean+errs[i].High)
		for _, v := range f.Values {
			top = math.Max(top, v)
		}
	}
	if top > 0 {
		p.Y.Max = top * 1.2 // headroom for the legend
	}
	p.Legend.Add("mean ± std", b)
	p.Legend.Add("replicate", sc)
	p.Legend.Top = true
	s := PlotSummary{Name: PlotFinalists, Title: "Finalists", Bars: len(fs), Series: 1, Panels: 1,
		Caption: "Each finalist's mean ± standard deviation over its replicates (other seeds, same parameters), best first, with every replicate value as a point."}
	return add(s, 6*vg.Inch, 4*vg.Inch, single(p))
}
