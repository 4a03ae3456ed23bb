package inference

import (
	"context"
	"errors"
	"fmt"
	"image"
	"strconv"
	"strings"
	"sync"

	"gocv.io/x/gocv"
)

// ErrEndOfStream is returned by Capture.Frame when a video file has no
// more frames (a camera never ends).
var ErrEndOfStream = errors.New("end of video stream")

// Capture takes frames from a camera (a V4L2 device such as /dev/video0,
// or its index) or a video file through OpenCV's VideoCapture. Frames are
// handed out PNG-encoded so that they take the same path as any other
// image (decoder limits, quarantine, storage). Safe for concurrent use.
type Capture struct {
	mu     sync.Mutex
	source string
	vc     *gocv.VideoCapture
	frame  gocv.Mat
	live   bool
}

// OpenCapture opens source: "/dev/videoN" or "N" for a camera, anything
// else as a video file (or URL OpenCV understands).
func OpenCapture(source string) (*Capture, error) {
	var (
		vc   *gocv.VideoCapture
		err  error
		live bool
	)
	idx, isIndex := deviceIndex(source)
	if isIndex {
		vc, err = gocv.VideoCaptureDeviceWithAPI(idx, gocv.VideoCaptureV4L2)
		live = true
	} else {
		vc, err = gocv.VideoCaptureFile(source)
	}
	if err != nil {
		return nil, fmt.Errorf("open capture %s: %w", source, err)
	}
	if !vc.IsOpened() {
		vc.Close()
		return nil, fmt.Errorf("open capture %s: OpenCV could not open it (missing device, no permission, or unsupported codec)", source)
	}
	return &Capture{source: source, vc: vc, frame: gocv.NewMat(), live: live}, nil
}

func deviceIndex(source string) (int, bool) {
	s := strings.TrimPrefix(source, "/dev/video")
	if s == source && !isDigits(source) {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil && n >= 0
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// Live reports whether the source is a camera (rather than a file).
func (c *Capture) Live() bool { return c.live }

// Frame reads the next frame and returns it PNG-encoded. For a camera it
// first drops the frames buffered since the previous call, so that a frame
// taken at an interval is current rather than stale.
func (c *Capture) Frame() ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.vc == nil {
		return nil, ErrClosed
	}
	if c.live {
		c.vc.Grab(4)
	}
	if !c.vc.Read(&c.frame) || c.frame.Empty() {
		if c.live {
			return nil, fmt.Errorf("capture %s: no frame (camera disconnected?)", c.source)
		}
		return nil, ErrEndOfStream
	}
	buf, err := gocv.IMEncode(gocv.PNGFileExt, c.frame)
	if err != nil {
		return nil, fmt.Errorf("capture %s: encode frame: %w", c.source, err)
	}
	defer buf.Close()
	return append([]byte(nil), buf.GetBytes()...), nil
}

// Close releases the device or file.
func (c *Capture) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.vc == nil {
		return nil
	}
	c.frame.Close()
	err := c.vc.Close()
	c.vc = nil
	return err
}

// FieldCell is one classified red cell of a field.
type FieldCell struct {
	Box          image.Rectangle
	PParasitized float64
	Focus        float64 // Result.Focus of the cell's crop
	// Appearance and Features of the cell's crop, for the plausibility
	// gate (zero and nil when the classifier does not produce them).
	Appearance Appearance
	Features   []float32
}

// FieldAnalysis is what AnalyzeField found in one field.
type FieldAnalysis struct {
	Width, Height int
	Cells         []FieldCell
	// WhiteCells are excluded from Cells (and from parasitemia).
	WhiteCells []image.Rectangle
	// Dropped counts regions the segmentation's size filters rejected.
	Dropped int
}

// AnalyzeField decodes a whole thin-smear field (with the classifier's
// decoder and its limits), segments it into red cells and classifies every
// cell's crop. It is how a daemon, which holds no gocv values itself, gets
// from field bytes to per-cell probabilities. Decoder refusals come back as
// the decoder's errors (ErrTruncated, ...), so callers can quarantine.
func AnalyzeField(ctx context.Context, c *Classifier, data []byte, opts SegmentOptions) (FieldAnalysis, error) {
	m, err := c.Decoder().Decode(data)
	if err != nil {
		return FieldAnalysis{}, err
	}
	defer m.Close()
	seg, err := SegmentField(m, opts)
	if err != nil {
		return FieldAnalysis{}, err
	}
	if err := seg.plausible(opts); err != nil {
		return FieldAnalysis{}, err
	}
	out := FieldAnalysis{Width: m.Cols(), Height: m.Rows(), WhiteCells: seg.WhiteCells, Dropped: seg.Dropped}
	n := len(seg.Cells)
	if n == 0 {
		return out, nil
	}
	var mu sync.Mutex
	crops := make([]*gocv.Mat, n)
	release := func(i int) {
		mu.Lock()
		defer mu.Unlock()
		if crops[i] != nil {
			crops[i].Close()
			crops[i] = nil
		}
	}
	defer func() {
		for i := range crops {
			release(i)
		}
	}()
	probs := make([]float64, n)
	focus := make([]float64, n)
	look := make([]Appearance, n)
	feats := make([][]float32, n)
	var firstErr error
	err = c.Stream(ctx, n, func(i int) Input {
		crop, err := seg.Crop(m, i)
		if err != nil {
			crop.Close()
			return Input{Mat: &gocv.Mat{}}
		}
		mu.Lock()
		crops[i] = &crop
		mu.Unlock()
		return Input{Mat: &crop}
	}, func(r Result) {
		// The crop was preprocessed before its batch ran: free it now.
		release(r.Index)
		if r.Err != nil && firstErr == nil {
			firstErr = fmt.Errorf("cell %d at %v: %w", r.Index, seg.Cells[r.Index].Box, r.Err)
		}
		probs[r.Index] = r.PParasitized
		focus[r.Index] = r.Focus
		look[r.Index], feats[r.Index] = r.Appearance, r.Features
	})
	if err != nil {
		return FieldAnalysis{}, err
	}
	if firstErr != nil {
		return FieldAnalysis{}, firstErr
	}
	out.Cells = make([]FieldCell, n)
	for i, cell := range seg.Cells {
		out.Cells[i] = FieldCell{Box: cell.Box, PParasitized: probs[i], Focus: focus[i], Appearance: look[i], Features: feats[i]}
	}
	return out, nil
}
