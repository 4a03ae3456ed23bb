package drift

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// ErrBadCSV is wrapped by ReadCSV's errors.
var ErrBadCSV = errors.New("bad score CSV")

// ReadCSV reads classified cells from CSV: a header naming a p_parasitized
// column, optional feature columns f0..fN (all of them, contiguous from f0)
// and an optional truth column (0/1 or uninfected/parasitized; not "label",
// which classify uses for the predicted class); other
// columns are ignored. A row whose p_parasitized is empty while an error
// column is filled (an image that failed to classify) is skipped. An
// optional slide column names each cell's slide, and an optional focus
// column each crop's focus (a finite number >= 0; the focus signal needs it).
// Columns a_NAME are image statistics (EvalRows.Appearance, finite
// numbers). At most maxRows rows are read (0: no limit).
func ReadCSV(r io.Reader, maxRows int) (*EvalRows, error) {
	cr := csv.NewReader(r)
	cr.ReuseRecord = true
	cr.FieldsPerRecord = 0
	head, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrBadCSV, err)
	}
	pCol, lCol, eCol, sCol, fCol := -1, -1, -1, -1, -1
	feat := map[int]int{} // feature index -> column
	var aCols []int
	var aNames []string
	for i, h := range head {
		h = strings.TrimSpace(strings.TrimPrefix(h, "\ufeff"))
		switch {
		case h == "p_parasitized":
			pCol = i
		case h == "truth":
			lCol = i
		case h == "error":
			eCol = i
		case h == "slide":
			sCol = i
		case h == "focus":
			fCol = i
		case len(h) > 2 && strings.HasPrefix(h, "a_"):
			if slices.Contains(aNames, h[2:]) {
				return nil, fmt.Errorf("%w: header: column %s appears twice", ErrBadCSV, h)
			}
			aCols, aNames = append(aCols, i), append(aNames, h[2:])
		case len(h) > 1 && h[0] == 'f':
			if k, err := strconv.Atoi(h[1:]); err == nil && k >= 0 && strconv.Itoa(k) == h[1:] {
				if _, dup := feat[k]; dup {
					return nil, fmt.Errorf("%w: header: column %s appears twice", ErrBadCSV, h)
				}
				feat[k] = i
			}
		}
	}
	if pCol < 0 {
		return nil, fmt.Errorf("%w: header has no p_parasitized column", ErrBadCSV)
	}
	for k := range len(feat) {
		if _, ok := feat[k]; !ok {
			return nil, fmt.Errorf("%w: header: feature columns must be f0..f%d without gaps; f%d is missing", ErrBadCSV, len(feat)-1, k)
		}
	}
	rows := &EvalRows{AppearanceNames: aNames}
	if lCol >= 0 {
		rows.Labels = []int{}
	}
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadCSV, err)
		}
		if maxRows > 0 && len(rows.Scores) >= maxRows {
			return nil, fmt.Errorf("%w: more than %d rows", ErrBadCSV, maxRows)
		}
		ps := strings.TrimSpace(rec[pCol])
		if ps == "" && eCol >= 0 && strings.TrimSpace(rec[eCol]) != "" {
			continue
		}
		p, err := strconv.ParseFloat(ps, 64)
		if err != nil || !(p >= 0 && p <= 1) {
			return nil, fmt.Errorf("%w: line %d: p_parasitized %q: want a number in [0, 1]", ErrBadCSV, line, ps)
		}
		if fCol >= 0 {
			fs := strings.TrimSpace(rec[fCol])
			f, err := strconv.ParseFloat(fs, 64)
			if err != nil || !validFocus(f) {
				return nil, fmt.Errorf("%w: line %d: focus %q: want a finite number >= 0", ErrBadCSV, line, fs)
			}
			rows.Focus = append(rows.Focus, f)
		}
		rows.Scores = append(rows.Scores, p)
		if sCol >= 0 {
			rows.Slides = append(rows.Slides, strings.Clone(rec[sCol]))
		}
		if lCol >= 0 {
			switch strings.TrimSpace(rec[lCol]) {
			case "1", "parasitized":
				rows.Labels = append(rows.Labels, 1)
			case "0", "uninfected":
				rows.Labels = append(rows.Labels, 0)
			default:
				return nil, fmt.Errorf("%w: line %d: truth %q: want 0, 1, uninfected or parasitized", ErrBadCSV, line, rec[lCol])
			}
		}
		if len(feat) > 0 {
			f := make([]float32, len(feat))
			for k := range f {
				v, err := strconv.ParseFloat(strings.TrimSpace(rec[feat[k]]), 32)
				if err != nil || !finite(v) {
					return nil, fmt.Errorf("%w: line %d: f%d %q: want a finite number", ErrBadCSV, line, k, rec[feat[k]])
				}
				f[k] = float32(v)
			}
			rows.Features = append(rows.Features, f)
		}
		if len(aCols) > 0 {
			a := make([]float64, len(aCols))
			for k, c := range aCols {
				v, err := strconv.ParseFloat(strings.TrimSpace(rec[c]), 64)
				if err != nil || !finite(v) {
					return nil, fmt.Errorf("%w: line %d: a_%s %q: want a finite number", ErrBadCSV, line, aNames[k], rec[c])
				}
				a[k] = v
			}
			rows.Appearance = append(rows.Appearance, a)
		}
	}
	if len(rows.Scores) == 0 {
		return nil, fmt.Errorf("%w: no rows", ErrBadCSV)
	}
	return rows, nil
}
