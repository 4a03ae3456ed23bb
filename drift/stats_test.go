package drift

import (
	"encoding/json"
	"math"
	"os"
	"testing"
)

type vectorCase struct {
	Name          string    `json:"name"`
	X             []float64 `json:"x"`
	Y             []float64 `json:"y"`
	KS            float64   `json:"ks"`
	CvM           float64   `json:"cvm"`
	Wasserstein   float64   `json:"wasserstein"`
	HistX         []float64 `json:"hist_x"`
	HistY         []float64 `json:"hist_y"`
	JensenShannon float64   `json:"jensenshannon"`
	PSI           float64   `json:"psi"`
}

func loadVectors(t testing.TB) []vectorCase {
	t.Helper()
	b, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Cases []vectorCase `json:"cases"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Cases) == 0 {
		t.Fatal("no test vectors")
	}
	return v.Cases
}

func closeTo(got, want float64) bool {
	return math.Abs(got-want) <= 1e-9*max(1, math.Abs(want))
}

// TestStatisticsMatchScipy checks the batch statistics against values
// computed with scipy (testdata/make_vectors.py).
func TestStatisticsMatchScipy(t *testing.T) {
	for _, c := range loadVectors(t) {
		t.Run(c.Name, func(t *testing.T) {
			checks := []struct {
				name      string
				got, want float64
			}{
				{"ks", KS2Samp(c.X, c.Y), c.KS},
				{"cvm", CramerVonMises2Samp(c.X, c.Y), c.CvM},
				{"wasserstein", Wasserstein1D(c.X, c.Y), c.Wasserstein},
				{"jensenshannon", JensenShannon(c.HistX, c.HistY), c.JensenShannon},
				{"psi", PSI(c.HistX, c.HistY), c.PSI},
			}
			for _, k := range checks {
				if !closeTo(k.got, k.want) {
					t.Errorf("%s = %.15g, scipy %.15g", k.name, k.got, k.want)
				}
			}
			h := histogram(c.X, scoreBins)
			{
				for i := range h {
					if h[i] != c.HistX[i] {
						t.Fatalf("histogram bin %d = %v, want %v", i, h[i], c.HistX[i])
					}
				}
			}
		})
	}
}
