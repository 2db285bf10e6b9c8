// Compiled with `tsc --strict --noEmit` by run.mjs: the package's types cover
// every option object and event (a misspelt option or a wrong type fails).
import init, { Gpu, GrpoRun, Model, TrainRun } from "../../pkg/webpeft.js";
import type { ChatMessage, ClassificationRecord, ClassifierEvalResult, ClassifyOptions, Prediction, TrainOptions, ComputeDtype, KernelFamily, GenerateResult, GgufOptions, GrpoCompletion, GrpoEvalResult, GrpoOptions, GrpoStepEvent, RewardFunction, LoadProgress, MemoryPlan, PreferenceEvalResult, PreferenceRecord, Reward, RewardRecord, StepEvent, StopReason, TrainSummary, UnpairedPreferenceRecord } from "../../pkg/webpeft.js";

export async function example(data: string): Promise<void> {
  await init();
  const gpu: Gpu = await Gpu.create();
  const forced: Gpu = await Gpu.create({ kernels: "gpu" });
  const family: KernelFamily = forced.info().kernels;
  console.log(family);
  const plan: MemoryPlan = gpu.planMemory("{}", { quant: "nf4", method: "lora", r: 8, batchSize: 4, seqLen: 128 });
  const fits: boolean = plan.fits;
  // A lost device: `lost` resolves with the reason; calls then reject with an Error named "DeviceLostError".
  const lost: Promise<string> = forced.lost;
  forced.destroy();
  const gone: boolean = forced.isLost();
  console.log(gone, await lost);
  const model: Model = await Model.fromUrl(gpu, "https://example.invalid/m/", {
    quant: "q8",
    computeDtype: gpu.info().shaderF16 ? "f16" : "f32",
    onProgress: (p: LoadProgress) => console.log(p.loadedBytes / p.totalBytes, p.tensor),
  });
  const compute: ComputeDtype = model.setComputeDtype(model.info().computeDtype);
  console.log(compute);
  const base = await Model.fromUrl(gpu, "https://example.invalid/model/", { quant: "nf4", quantType: "fp4", doubleQuant: true });
  await base.initLora("p", { r: 8, alpha: 16, init: "loftq", loftqIter: 2, targets: "all-linear" });
  await base.initLora("q", { init: "pissa_niter_4" });
  model.addLora("a", { r: 8, alpha: 16, targets: ["q_proj", "v_proj"], dropout: 0.05, rslora: false, trainableTokenIndices: [5, 17], lmHeadRows: true });
  model.addLora("w", { modulesToSave: ["embed_tokens", "lm_head"], ensureWeightTying: false });
  model.addTrainableTokens("tt", { tokenIndices: [5, 17] });
  model.addBottleneck("b", { method: "par_bn", reductionFactor: 2, nonLinearity: "relu" });
  model.addIa3("c", { targets: ["k_proj", "v_proj", "down_proj"], feedforwardModules: ["down_proj"], seed: 1 });
  model.addPromptTuning("d", { numVirtualTokens: 8, init: "text", initText: "Answer briefly:", seed: 1 });
  model.addPrefixTuning("e", { numVirtualTokens: 10, seed: 1 });
  model.addPrefixTuning("f", { numVirtualTokens: 10, prefixProjection: true, encoderHiddenSize: 64, seed: 1 });
  model.addPTuning("g", { numVirtualTokens: 10, encoderHiddenSize: 64, seed: 1 });
  model.addAdaLora("h", { initR: 12, targetR: 8, alpha: 16, targets: "all-linear", tinit: 2, tfinal: 2, deltaT: 1, orthRegWeight: 0.5, totalStep: 10, seed: 1 });
  const run: TrainRun = model.startTraining("a", data, { lr: 2e-4, steps: 10, schedule: "cosine", warmup: 2, loraplusLrRatio: 16 });
  const pairs: PreferenceRecord[] = [{ prompt: "Hi", chosen: " Hello.", rejected: " Go away." },
    { prompt: [{ role: "user", content: "Hi" }], chosen: [{ role: "assistant", content: "Hello." }], rejected: [{ role: "assistant", content: "No." }] }];
  const dpo: TrainRun = model.startTraining("b", pairs, { lr: 1e-3, objective: "dpo", beta: 0.1, labelSmoothing: 0.1 });
  const margin: number | undefined = (await dpo.step())?.rewards?.margins;
  const ipo: TrainRun = model.startTraining("b", pairs, { lr: 1e-3, objective: "dpo", lossType: "ipo", rpoAlpha: 0.5, referenceFree: true });
  const nll: number | undefined = (await ipo.step())?.rewards?.nllLoss;
  console.log(nll, model.startTraining("b", pairs, { lr: 1e-3, objective: "dpo", lossType: "discopop", discopopTau: 0.1 }).totalSteps());
  const simpo: TrainRun = model.startTraining("b", pairs, { lr: 1e-3, objective: "cpo", lossType: "simpo", beta: 2, cpoAlpha: 0, simpoGamma: 1 });
  console.log((await simpo.step())?.rewards?.margins);
  const unpaired: UnpairedPreferenceRecord[] = [{ prompt: "Hi", completion: " Hello.", label: true }, { prompt: "Hi", completion: " Go away.", label: false }];
  const kto: TrainRun = model.startTraining("b", unpaired, { lr: 1e-3, objective: "kto", batchSize: 2, desirableWeight: 1, undesirableWeight: 1.5 });
  console.log((await kto.step())?.kto?.kl);
  console.log(margin);
  const first: StepEvent | undefined = await run.step();
  const summary: TrainSummary = await run.train((e: StepEvent) => console.log(e.loss, e.etaSeconds));
  const out: GenerateResult = await model.generate("Hi", { maxNewTokens: 8, adapter: null, onToken: (t: string) => console.log(t) });
  // A conversation, stopped by an AbortSignal or by onToken returning false.
  const chat: ChatMessage[] = [{ role: "system", content: "Be brief." }, { role: "user", content: "Hi" }];
  const rendered: string = model.applyChatTemplate(chat) + model.applyChatTemplate(chat, false) +
    model.applyChatTemplate(chat, true, { enable_thinking: false });
  const stop = new AbortController();
  let pieces = 0;
  const own: boolean = model.info().generation.doSample;
  const answer: GenerateResult = await model.generate(chat, { temperature: 0.7, topP: 0.9, repetitionPenalty: own ? 1 : 1.1, seed: 1, adapter: "a", signal: stop.signal,
    chatTemplateKwargs: { enable_thinking: false }, stopStrings: ["\n\n"], badWordsIds: [[5, 6]], suppressTokens: [7],
    typicalP: 0.9, epsilonCutoff: 3e-4, etaCutoff: 3e-4,
    onToken: (t: string) => { if (t.includes("\n")) stop.abort(); return ++pieces < 50; } });
  const why: StopReason = answer.stopReason;
  console.log(rendered, why, answer.promptTokens, answer.tokenIds.length);
  const zip: Uint8Array = await model.exportAdapterZip("a");
  const gguf: GgufOptions = { kind: "merged", type: "q8_0", tokenizerPre: "llama-bpe" };
  let streamed = 0;
  const ggufBytes: number = await model.exportGguf("a", gguf, (chunk: Uint8Array) => { streamed += chunk.length; });
  console.log(ggufBytes === streamed);
  const evaluated = await model.evaluate([{ text: "x" }], {});
  const accuracy: number | undefined = first?.meanTokenAccuracy;
  console.log(fits, first?.step, summary.state, out.text, zip.length, evaluated.perplexity, evaluated.meanTokenAccuracy, accuracy,
    first?.entropy, first?.numTokens);
  const held: PreferenceRecord[] = [{ prompt: "Hi", chosen: " there.", rejected: " no." }];
  const judged: PreferenceEvalResult = await model.evaluatePreference(held, { objective: "dpo", beta: 0.1, batchSize: 1 });
  // A reward model: a SEQ_CLS LoRA, pairs with margins, TRL's reward metrics, score() on texts and conversations.
  model.addLora("rm", { r: 4, taskType: "SEQ_CLS" });
  const rewardPairs: RewardRecord[] = [{ chosen: "The fox ran.", rejected: "fox fox", margin: 0.5 }];
  const rewardStep: StepEvent | undefined = await model.startTraining("rm", rewardPairs, { lr: 1e-3, steps: 1, objective: "reward", disableDropout: true,
    centerRewardsCoefficient: 0.01 }).step();
  console.log(rewardStep?.reward?.accuracy, rewardStep?.reward?.maxReward);
  const rewards: number[] = await model.score(["The fox ran.", [{ role: "user", content: "Hi" }]], { adapter: "rm" });
  console.log(rewards[0]);
  // A classifier: a SEQ_CLS LoRA of 3 labels, labelled texts, classify() and evaluateClassifier().
  model.addLora("cls", { r: 4, taskType: "SEQ_CLS", numLabels: 3 });
  const labelled: ClassificationRecord[] = [{ text: "The fox ran.", label: 2 }, { text: "Hi", label: [0, 1, 0] }];
  const clsOptions: TrainOptions = { lr: 1e-3, steps: 1, objective: "classification", problemType: "single_label_classification" };
  console.log(model.startTraining("cls", labelled.slice(0, 1), clsOptions).totalSteps());
  const verdicts: Prediction[] = await model.classify(["The fox ran."], { adapter: "cls" } as ClassifyOptions);
  const clsEval: ClassifierEvalResult = await model.evaluateClassifier(labelled.slice(0, 1), { adapter: "cls", batchSize: 1 });
  console.log(verdicts[0].label, verdicts[0].score, verdicts[0].logits.length, clsEval.loss, clsEval.accuracy, clsEval.rows);
  console.log(judged.loss, judged.metrics["rewards/accuracies"], judged.batches);
  const lengthReward: RewardFunction = async (cs: GrpoCompletion[]) => cs.map((c) => c.completionIds.length);
  const byModel: Reward[] = [lengthReward, "rm"];
  console.log(model.startGrpo("a", [{ prompt: "2 + 2 =" }], { lr: 1e-5, steps: 1 }, byModel).totalSteps());
  const answered: RewardFunction = (cs) => cs.map((c) => (c.fields["answer"] === undefined ? null : Number(c.completion.includes(String(c.fields["answer"])))));
  const grpoOptions: GrpoOptions = { lr: 1e-5, steps: 4, numGenerations: 4, batchSize: 4, beta: 0.04, lossType: "grpo", scaleRewards: "none", rewardWeights: [0.1, 1],
    numIterations: 2, stepsPerGeneration: 2, importanceSamplingLevel: "sequence", epsilon: 0.2, epsilonHigh: 0.28, delta: 1.5,
    topEntropyQuantile: 0.2, disableDropout: false };
  const byRows: GrpoOptions = { ...grpoOptions, stepsPerGeneration: undefined, generationBatchSize: 8 };
  const rlooOptions: GrpoOptions = { lr: 1e-5, steps: 2, objective: "rloo", beta: 0.05, normalizeAdvantages: true, rewardClipRange: [0, 1] };
  console.log(model.startGrpo("c", [{ prompt: "1 + 2 =" }], rlooOptions, [lengthReward]).totalSteps());
  console.log(model.startGrpo("b", [{ prompt: "1 + 1 =" }], byRows, [lengthReward]).totalSteps());
  const grpo: GrpoRun = model.startGrpo("a", [{ prompt: "2 + 2 =", answer: "4" }], grpoOptions, [lengthReward, answered]);
  const grpoFirst: GrpoStepEvent | undefined = await grpo.step();
  const grpoDone: TrainSummary = await grpo.train((e: GrpoStepEvent) => console.log(e.reward, e.rewardMeans[0], e.kl ?? 0, e.clipRatio[2], e.completions[0].completion));
  console.log(grpoFirst?.fracRewardZeroStd, grpoDone.state, grpo.totalSteps());
  const heldOut: GrpoEvalResult = await grpo.evaluate([{ prompt: "3 + 3 =", answer: "6" }]);
  console.log(heldOut.loss, heldOut.reward, heldOut.rewardMeans[1], heldOut.kl ?? 0, heldOut.clipRatio[2], heldOut.completions);
  const grpoCheckpoint: Uint8Array = await grpo.saveCheckpoint();
  const grpoResumed: GrpoRun = model.resumeGrpo("a", grpoCheckpoint, [{ prompt: "2 + 2 =", answer: "4" }], grpoOptions, [lengthReward]);
  console.log(grpoResumed.currentStep());
}
