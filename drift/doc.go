// Package drift owns everything that compares what the classifier sees in the
// field with what it did on its held-out test set: the Baseline (baseline.json
// in a model bundle), the online detectors whose thresholds are calibrated by
// simulation to an expected run time without drift, the label-free
// performance estimate, descriptive window statistics, and the evaluation
// harness that measures run lengths and detection delays.
//
// The package is pure Go and takes plain values from its callers: scores are
// []float64 (p(parasitized)), labels []int (1 = parasitized), features
// [][]float32 (the backbone's pooled embedding), focus []float64 (a per-crop
// sharpness measure; inference computes the variance of the Laplacian inside
// the cell).
//
// # Detection scheme
//
// Each signal (score distribution, predicted-positive rate, embedding,
// focus) is tested on several sliding windows over the most recent scores. At step t
// (counted from the last Reset) a test alarms when its statistic exceeds a
// threshold that depends on t while the windows fill and settles to a constant
// afterwards. Thresholds are set when the baseline is built by simulating
// drift-free streams and choosing, block of steps by block of steps, the
// thresholds for which the rate of first alarms among the streams that have
// not alarmed yet equals 1/ERT, split across signals by weight (the scheme of
// Cobb et al., "Sequential multivariate change detection with calibrated and
// memoryless false detection rates", AISTATS 2022). Two tiers are calibrated
// the same way: warn (ERT/10 by default) and alarm (ERT).
//
// The drift-free streams are drawn as a Pólya urn over the reference rows, so
// that the calibration accounts for the reference itself being a finite sample
// of the test-set distribution: a live stream from the same distribution is new
// data, not a copy of the reference. The "bootstrap" null model (plain
// resampling of the reference) is available for comparison; it is too
// permissive for new data with large windows.
//
// # Slides, one after another
//
// A microscope sends one slide after another, and each slide has its own
// stain, light, focus and parasitemia, so a window of a few hundred cells
// mostly sees one slide. Null models that mix the cells of all reference
// slides describe a stream drawn from many slides at once; against a
// stream sent slide by slide their thresholds are far too low (measured:
// a nominal stream alarmed within its first slide). The "slides" null
// model simulates what the device does: it draws whole reference slides,
// from a Pólya urn over the slides (so new slides are exchangeable with
// the reference's, and the reference's own sampling of slides counts), and
// sends each slide's own cells in random order, without replacement, for
// the slide's length (the reference slide's cell count, or a configured
// range). Drawing a slide's cells with replacement would add their
// sampling noise a second time; measured, it doubled the positive-rate and
// embedding tests' run lengths. The simulated streams span at least six
// slides, because false alarms come at slide changes. It needs a baseline
// built from whole slides as long as the device's (at least 20 slides of
// 50 cells; the shipped one has 160 slides of 250 cells), and its ERT,
// stated in cells, is also a number of slides: ERT / cells per slide.
//
// # Between slides
//
// SlideTier tests the sequence of completed slides rather than of cells
// (see slidetier.go): one standardised value per slide and signal
// (positive rate, mean score, mean log focus, mean projected embedding,
// each against the spread between the reference slides plus the cell
// noise of a slide of its size), clipped, summed by a CUSUM per signal
// whose limit is calibrated on leave-one-out reference slides to an ERT in
// slides. It is evaluated by `drift eval --slide-tier` and not yet run by
// the daemon. Measured on the shipped baseline it holds its ERT and catches
// a prevalence change of every slide within three slides, but the model's
// own outputs barely move under stain, brightness or blur shifts the model
// copes with (stain +20° moved no signal by more than one between-slide
// standard deviation), so telling those apart needs slide-level colour and
// light statistics, which the baseline does not keep yet.
//
// # Focus
//
// A microscope drifting out of focus is something operators must hear about
// even while the classifier copes with it, and a classifier that copes
// barely moves its scores or its (projected) embedding under moderate
// defocus. The focus signal (focus_cvm) therefore tests the
// distribution of an image-quality value, the crop's focus, against the
// test set's, with the same rank-based Cramér-von Mises machinery as the
// scores. It is on when the baseline was built with focus values
// (BaselineConfig.Focus); older baselines load without it. The calibration
// draws a reference row's score, embedding and focus together, so the
// dependence between them (blurred slides are also scored a little
// differently) is kept in the simulated drift-free streams.
//
// Its limits: the focus value follows contrast, stain intensity,
// brightness and sensor noise as well as defocus, so a stain or lamp change
// can raise it too (it is an image-quality alarm, not a diagnosis of
// blur); sensor noise sets a floor under it, so it tells a stream that
// went soft from a sharp one but cannot grade defocus beyond about a
// pixel; it is comparable only between crops of the same kind and scale as
// the baseline's (crops on black at the model's input size), so a baseline
// built from NIH-style crops does not describe the focus of cells
// segmented from whole fields, which are smaller (upsampled to the input
// size) and measure sharper; and it tests the stream's distribution: one
// slide whose defocus lies within the test set's slide-to-slide range is
// not drift, a whole stream moved that way is.
package drift

// # Other outputs
//
// The label-free performance estimate (Monitor.Performance) is
// confidence-based, like NannyML's CBPE: with calibrated probabilities p
// (the baseline's isotonic map, when it lowered the cross-validated
// calibration error), the expected accuracy of a window is the mean of p for
// predicted positives and 1-p for predicted negatives, and likewise for
// sensitivity and specificity. It alerts when the largest window's estimate
// falls below both the baseline's lower 95% bound and the 1st percentile of
// simulated drift-free windows of that size. Its limits: it assumes the
// probabilities stay calibrated, so it is blind to concept drift (the same
// image now meaning something else) and unreliable on inputs unlike the test
// set, where a model is often confidently wrong; it follows changes in the
// mix of easy and hard cells and in prevalence, which are not necessarily
// errors.
//
// Descriptive statistics (Baseline.Describe: PSI, Jensen-Shannon,
// Wasserstein, Kolmogorov-Smirnov) come with thresholds simulated at the
// window's actual size, for people to read; they do not raise events.
//
// # What the calibration promises
//
// The ERT holds on average over test sets drawn from the same distribution.
// For one given baseline the drift-free run length differs from it by the
// reference's own sampling error, which grows with the window and shrinks
// with the reference (up to 5000 rows are kept). No test runs before its
// window holds 10 scores (minFill), so ERTs of a few tens of scores cannot be
// met.
