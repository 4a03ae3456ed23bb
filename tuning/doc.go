// Package tuning owns hyperparameter studies for retuning a model the way
// the project's seed article prescribes: a study names its parameters with a
// role (scientific: the question being asked; nuisance: tuned for each
// scientific value before values are compared; fixed: held constant and
// recorded as a caveat), searches them in two phases (quasi-random
// exploration, then exploitation), and keeps everything it asks and hears in
// a journal so that a study can be resumed and its report redrawn.
//
// The package is pure Go (no cgo, directly or through another package) so
// that studies and their tests run anywhere.
//
// # What is in the package
//
// The study file (Study, Decode, Load): YAML decoded strictly, every field
// validated with an error that names it. The search space (Space) maps the
// searched parameters to the unit cube and back, with log scales and an
// equal share of each coordinate for every int or categorical value.
//
// The Runner runs a study into a study folder: DIR/journal.jsonl (Journal,
// every ask journalled before its trial starts and every tell when it ends,
// fsynced), DIR/trials/NNNN/ (one folder per trial) and, drawn by
// WriteReport, DIR/report.html with DIR/plots. A study is searched in two
// phases:
//
//   - Exploration: the first budget.explore trials take the scrambled Halton
//     point (Halton) of their number.
//   - Exploitation: Gaussian-process Bayesian optimisation (Suggest, FitGP):
//     a Matérn 5/2 kernel with one length scale per parameter (a categorical
//     parameter's one-hot block shares one), hyperparameters fitted by
//     maximising the marginal likelihood under weak log-normal priors,
//     standardised targets, and log expected improvement in its numerically
//     stable form (LogEI) optimised over valid values only: ints and
//     categoricals are never rounded after the fact. Trials still running are
//     pending points (their predicted mean stands in for their result), failed
//     trials take the worst observed value so the search leaves their region,
//     and a suggestion never repeats a trial.
//
// Determinism: suggestion n is conditioned on the outcomes of trials
// 1..n-budget.overlap and on the parameters of the trials between, whatever
// budget.parallel is, and pruning decisions are made against the same trials.
// A study with the same seed therefore asks the same parameters with
// parallel 1 or 2, and a resumed study (finished trials kept, interrupted
// ones rerun with their parameters and seed) continues as if it had never
// stopped. Parallel above overlap leaves slots idle during exploitation.
//
// Pruning (pruning.method asha or hyperband) is successive halving with
// epochs as the resource: at each rung (grace_epochs·reduction^k) a trial
// goes on only if it is in the best 1/reduction of the earlier trials at that
// rung; Hyperband deals trials round-robin into brackets that start judging
// later. After the search, replicates.finalists of the best trials are rerun
// with replicates.seeds seeds, the same seeds for every finalist, and the
// report compares the winner with the runner-up seed by seed.
//
// The report (Analyze, WriteReport) holds the playbook's checks: the best
// result per scientific value with nuisance parameters tuned for each (the
// isolation view), refused as a comparison when a value has fewer than 3
// complete trials; warnings when the best trial lies within 5% of a search
// bound, when more than 20% of trials failed, and when the finalists are not
// told apart from seed noise; the fixed parameters as caveats. Its plots
// (gonum/plot, PNG and SVG): training curves of the top three trials, the
// best trial's per-layer weight histograms, parallel coordinates,
// optimisation history, isolation per scientific parameter, a marginal
// parameter importance, and the finalists' mean ± standard deviation.
//
// The built-in head trainer (objective builtin: head, HeadObjective) trains
// the seed article's head, Dense(dim→hidden) ReLU, dropout, Dense→softmax,
// in plain Go on cached backbone features (Features, a
// scopewatch.features/v1 file: a JSON header line, binary rows, a CRC-32C;
// WriteFeatures is atomic, ReadFeatures bounded and strict). Every trial
// sees the same slide-disjoint 80/20 split (SplitBySlide). Its parameters
// are optimizer (adam, sgd, rmsprop), lr, l2, dropout, hidden, momentum,
// schedule (plateau: ReduceLROnPlateau factor 0.3 patience 2; cosine; none),
// patience (early stopping with the best weights restored; the trial's
// value is then the best epoch's metric) and batch_size, which is never
// searched: when a study leaves it out, ProbeBatchSize picks it once per
// dataset by throughput, and every epoch records it. Each epoch reports
// epoch, train_loss, train_acc, val_loss, val_acc, grad_norm, lr,
// best_epoch and batch_size, and rewrites the trial's histograms.json
// (dense1.weight, dense2.weight). A NaN or infinite loss fails the trial
// with a reason; an unknown parameter is an error naming it.
//
// The command line is `scopewatch tune run|report|features`; examples are in
// tuning/examples.
//
// # Study file
//
//	name: optimizer-vs-lr
//	objective:
//	  command: ["python3", "trial.py"]   # or builtin: head
//	  metric: val_loss                   # read from the trial's JSON lines
//	  direction: minimize                # or maximize
//	parameters:
//	  - {name: optimizer, role: scientific, type: categorical, values: [adam, sgd]}
//	  - {name: lr, role: nuisance, type: float, min: 1e-4, max: 1e-1, log: true}
//	  - {name: dropout, role: nuisance, type: float, min: 0, max: 0.5}
//	  - {name: batch_size, role: fixed, value: 248}
//	budget: {trials: 60, explore: 16, parallel: 2, overlap: 2, max_epochs: 10}
//	pruning: {method: asha, grace_epochs: 1, reduction: 3}   # or none / hyperband
//	replicates: {finalists: 3, seeds: 3}
//	seed: 1
//
// A fixed parameter takes a value and no type. A searched parameter
// (scientific or nuisance) is float (min, max, optionally log), int (min,
// max, optionally log) or categorical (values). The batch size is never
// searched: the seed article fixes it once per dataset by throughput, and
// tuning it confounds every other comparison, so a searched parameter named
// batch_size is refused.
//
// # Trial protocol
//
// objective.command runs once per trial, in the trial's own folder, with one
// JSON object on stdin:
//
//	{"trial": N, "seed": S, "params": {...}, "max_epochs": E, "dir": "<trial folder>"}
//
// params holds every parameter, fixed ones included. The command prints JSON
// lines on stdout, one per epoch, for example
//
//	{"epoch": 1, "val_loss": 0.41, "train_loss": 0.52}
//
// Numeric keys feed pruning and the curves; other keys are ignored. The
// metric of the last line that carries it is the trial's result; a bare
// {"value": v} with metric: value is the minimal form. A non-zero exit, a
// stdout line that is not a JSON object (the trial is stopped at once), or no
// line with the metric fails the trial: it is kept as failed, with the
// reason, never dropped. A trial the pruner stops gets SIGTERM, then SIGKILL
// after 5 s, and is recorded as pruned with its last value. Stderr goes to
// stderr.log in the trial's folder.
package tuning
