// Command blackbox is the tuning engine's black-box example and benchmark.
//
//	blackbox trial FUNCTION
//
// is a trial command that speaks the trial protocol (JSON on stdin, one JSON
// line on stdout) and evaluates one of the standard test functions of global
// optimisation at the trial's parameters x1..xd (scaled to the unit cube).
//
//	blackbox bench [--fn NAME] [--trials N] [--seeds N] [--out DIR]
//
// runs a study per seed through that command, with the same engine and
// protocol as `scopewatch tune run`, and prints the median simple regret
// (best value found minus the known global minimum) per function.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/scopewatch/scopewatch/tuning"
)

// function is a test function on the unit cube with its known minimum.
type function struct {
	dim int
	min float64
	f   func(u []float64) float64
}

var functions = map[string]function{
	// Branin on [-5,10]x[0,15].
	"branin": {2, 0.397887357729739, func(u []float64) float64 {
		x, y := -5+15*u[0], 15*u[1]
		return math.Pow(y-5.1/(4*math.Pi*math.Pi)*x*x+5/math.Pi*x-6, 2) + 10*(1-1/(8*math.Pi))*math.Cos(x) + 10
	}},
	"hartmann3": {3, -3.86278214782076, func(u []float64) float64 {
		return hartmann(u, hart3A[:], hart3P[:])
	}},
	"hartmann6": {6, -3.32236801141551, func(u []float64) float64 {
		return hartmann(u, hart6A[:], hart6P[:])
	}},
	// Six-hump camel on [-3,3]x[-2,2].
	"camel": {2, -1.03162845348988, func(u []float64) float64 {
		x, y := -3+6*u[0], -2+4*u[1]
		return (4-2.1*x*x+x*x*x*x/3)*x*x + x*y + (-4+4*y*y)*y*y
	}},
	// Goldstein-Price on [-2,2]^2, log-transformed as is usual for BO
	// benchmarks: its range spans six orders of magnitude.
	"goldstein": {2, math.Log(3), func(u []float64) float64 {
		x, y := -2+4*u[0], -2+4*u[1]
		a := 1 + (x+y+1)*(x+y+1)*(19-14*x+3*x*x-14*y+6*x*y+3*y*y)
		b := 30 + (2*x-3*y)*(2*x-3*y)*(18-32*x+12*x*x+48*y-36*x*y+27*y*y)
		return math.Log(a * b)
	}},
	// Rosenbrock 4-D on [-2,2]^4, log(1+f).
	"rosenbrock4": {4, 0, func(u []float64) float64 {
		var s float64
		for i := 0; i < 3; i++ {
			x, y := -2+4*u[i], -2+4*u[i+1]
			s += 100*(y-x*x)*(y-x*x) + (1-x)*(1-x)
		}
		return math.Log1p(s)
	}},
}

var (
	hart3A = [4][6]float64{{3, 10, 30}, {0.1, 10, 35}, {3, 10, 30}, {0.1, 10, 35}}
	hart3P = [4][6]float64{{0.3689, 0.1170, 0.2673}, {0.4699, 0.4387, 0.7470}, {0.1091, 0.8732, 0.5547}, {0.03815, 0.5743, 0.8828}}
	hart6A = [4][6]float64{{10, 3, 17, 3.5, 1.7, 8}, {0.05, 10, 17, 0.1, 8, 14}, {3, 3.5, 1.7, 10, 17, 8}, {17, 8, 0.05, 10, 0.1, 14}}
	hart6P = [4][6]float64{
		{0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886}, {0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991},
		{0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650}, {0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381}}
	hartAlpha = [4]float64{1, 1.2, 3, 3.2}
)

func hartmann(u []float64, a, p [][6]float64) float64 {
	var s float64
	for i := range 4 {
		var e float64
		for j := range u {
			e += a[i][j] * (u[j] - p[i][j]) * (u[j] - p[i][j])
		}
		s += hartAlpha[i] * math.Exp(-e)
	}
	return -s
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: blackbox trial FUNCTION | blackbox bench [--fn NAME] [--trials N] [--seeds N] [--out DIR]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "trial":
		err = trial(os.Args[2:])
	case "bench":
		err = bench(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "blackbox:", err)
		os.Exit(1)
	}
}

// trial is the trial protocol's minimal form: read the input, print
// {"value": v}.
func trial(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("want trial FUNCTION")
	}
	fn, ok := functions[args[0]]
	if !ok {
		return fmt.Errorf("unknown function %q", args[0])
	}
	var in tuning.TrialInput
	if err := json.NewDecoder(bufio.NewReader(os.Stdin)).Decode(&in); err != nil {
		return fmt.Errorf("read trial input: %w", err)
	}
	u := make([]float64, fn.dim)
	for i := range u {
		v, ok := in.Params[fmt.Sprintf("x%d", i+1)].(float64)
		if !ok {
			return fmt.Errorf("params: x%d missing or not a number", i+1)
		}
		u[i] = v
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]float64{"value": fn.f(u)})
}

// Study is the black-box study for fn with the given budget and seed.
func Study(name string, fn function, trials int, seed int64, self string) (*tuning.Study, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nobjective: {command: [%q, trial, %s], metric: value, direction: minimize}\nparameters:\n", name, self, name)
	for i := range fn.dim {
		fmt.Fprintf(&b, "  - {name: x%d, role: nuisance, type: float, min: 0, max: 1}\n", i+1)
	}
	fmt.Fprintf(&b, "budget: {trials: %d}\nseed: %d\n", trials, seed)
	return tuning.Decode(strings.NewReader(b.String()))
}

func bench(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fns := fs.String("fn", "branin:30,hartmann6:50,hartmann3:40,camel:30,goldstein:30,rosenbrock4:50", "functions with their trial budgets, NAME:TRIALS,...")
	seeds := fs.Int("seeds", 20, "studies (seeds) per function")
	out := fs.String("out", "", "folder for the study folders (default: a temporary one, removed)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir := *out
	if dir == "" {
		if dir, err = os.MkdirTemp("", "blackbox-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	fmt.Printf("%-12s %6s %6s %14s %14s %14s\n", "function", "trials", "seeds", "median regret", "worst regret", "best regret")
	for _, spec := range strings.Split(*fns, ",") {
		name, n, ok := strings.Cut(spec, ":")
		fn, known := functions[name]
		var trials int
		if _, err := fmt.Sscan(n, &trials); !ok || !known || err != nil {
			return fmt.Errorf("--fn %q: want NAME:TRIALS with NAME one of branin, hartmann3, hartmann6, camel, goldstein, rosenbrock4", spec)
		}
		var regrets []float64
		for seed := 1; seed <= *seeds; seed++ {
			s, err := Study(name, fn, trials, int64(seed), self)
			if err != nil {
				return err
			}
			r := &tuning.Runner{Study: s, Dir: filepath.Join(dir, fmt.Sprintf("%s-%02d", name, seed)),
				Trial: tuning.CommandObjective(s.Objective.Command, s.Objective.Metric)}
			sum, err := r.Run(context.Background())
			if err != nil {
				return fmt.Errorf("%s seed %d: %w", name, seed, err)
			}
			if sum.Best == nil {
				return fmt.Errorf("%s seed %d: no trial completed", name, seed)
			}
			regrets = append(regrets, sum.Best.Value-fn.min)
		}
		slices.Sort(regrets)
		med := regrets[len(regrets)/2]
		if len(regrets)%2 == 0 {
			med = (regrets[len(regrets)/2-1] + regrets[len(regrets)/2]) / 2
		}
		fmt.Printf("%-12s %6d %6d %14.4g %14.4g %14.4g\n", name, trials, *seeds, med, regrets[len(regrets)-1], regrets[0])
	}
	return nil
}
