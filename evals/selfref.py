"""Does a prompt ask the assistant about itself? The rule behind an unlabelled record's ``kind``.

A prompt file without ``kind`` still has to be scored right: an identity prompt read as general
would count its (correct) new-name answer as a leak. The patterns below look for the assistant
being asked who or what it is, what it is called, who made it, where it comes from or which model
it runs on, in Chinese or English, and leave alone questions that merely say "you" ("你能帮我翻译
这句话吗？", "What are you supposed to do when a fire alarm rings?"), ask who made something else
("谁发明了电话？", "Who created Linux?"), or use the same words for another question ("Who are you
rooting for?", "Who made you cry?", "your name field", "你能做什么菜？", "你是谁的粉丝？", a quoted
phrase to translate). tests/test_selfref.py holds held-out phrasings written apart from the
built-in sets, both ways.
"""

from __future__ import annotations

import re
import unicodedata

_Y = r"(?<!迷)(?:你们?|您们?)"  # "you" in Chinese, singular or plural (not the 你 of 迷你, "mini")
_MAKE = r"(?:写|运营|维护|开发|创造|创建|创立|训练|制作|制造|设计|打造|研发|发明|编写|做|造|搞|生产|推出|发布)"
_WHICH = r"(?:什么|哪个|哪种|哪一个|哪家|哪款|哪一款)"
_YOU = r"(?:you|u|ya)"
_MADE = r"(?:operates|operated|runs|maintains|maintained|made|created|trained|developed|built|designed|owns|owned|programmed|wrote|coded|invented|produced|released)"
_AI = r"(?:ai|a\.i\.|model|llm|language model|chatbot|bot|assistant|system|program)"
# "made you" is also causative: "who made you cry / the boss?" asks about feelings, not the maker; only
# an end of clause or a few filler words may follow when it asks who built the assistant
_MADE_YOU = (rf"(?:made {_YOU}\b(?!\s+(?!(?:and|or|exactly|originally|really|then|again|first|in|at|back|anyway|lol|though|tho|"
             rf"possible|what|is|was|are|were)\b)[a-z])|(?!made){_MADE} {_YOU}\b)")

# each pattern is searched in the prompt, case-insensitive
SELF_REFERENCE = [
    # -- Chinese ------------------------------------------------------------------------------
    # 你是谁 / 你到底是谁 / 您是哪位 / 你是什么？ / 你是哪家的 (not 你是什么时候…, 你是什么意思, nor 你是谁的粉丝:
    # 谁的 + a noun asks whose fan the assistant is, unless the noun is what it would be: 你是谁的产品)
    rf"{_Y}(?:到底|究竟|又|本来|其实|现在)?(?:是|shi)(?:个|一个)?"
    r"(?:谁(?!的(?!产品|作品|ai|助手|模型|机器人|程序|$|[？?！!。，,]))|哪|什么(?!时候|意思|感觉|看法|想法|原因|心情))",
    r"自己是(?:谁|哪|什么)",
    # 你哪位 / 你谁啊: the same question with 是 dropped, as people say it
    rf"{_Y}(?:哪位|谁[啊呀])",
    # 你谁？ / 请问您是？ : the question cut short, as said aloud (not 你谁也不信, 你是说…?)
    rf"(?:^|[，,。.！!？?\s]|请问){_Y}(?:谁|是)\s*(?:[？?]\s*)+$",
    # 你叫什么 (not 你叫什么都行: "whatever your name is, write me a poem")
    rf"{_Y}叫(?:什么|啥|做什么)(?!都|也)", rf"{_Y}(?:有|叫)(?:没有)?(?:自己的|别的|其他的?)?(?:名字|名称|大名|称呼|身份)",
    # 你的名字 / 你的来历 / 你的开发团队 / 你背后的公司 / 你的 name (not 你的论文作者 or 你的模型准确率只有60%:
    # the user's paper or model)
    rf"{_Y}(?:的[^\s，,。？?！!的]{{0,4}})?(?:公司|团队|开发团队|研发团队)(?:是|叫|名字是)?(?:谁|哪|什么|啥)",
    rf"{_Y}的?\s*(?:knowledge cutoff|知识截止|训练截止|参数|name\b|creator|developer|maker|author|base model)",
    rf"{_Y}(?:的(?!论文|文章|书|小说|作品|项目|代码|简历|报告|文档|稿子)[^\s，,。？?！!的]{{0,4}})?(?:名字|名称|大名|真名|姓名|称呼|身份|来历|来源|出身|底细|背景|老板|东家|父母|背后|开发者|开发方|开发商|研发者|研发方|缔造者|制作者|出品方|"
    rf"作者|创造者|创建者|创始人|制造者|设计者|主人|所有者|底座|基座|模型|架构|版本|训练数据|真实身份|昵称|外号|绰号|代号|小名)"
    r"(?!\S{0,2}(?:准确|精度|效果|loss|损失|召回|指标|表现|过拟合|欠拟合|收敛|训练得))",
    r"贵姓|尊姓大名|高姓大名|自我介绍", rf"(?:怎么|如何|该|可以|能)?称呼{_Y}", rf"叫{_Y}(?:什么|啥)",
    # 您怎么称呼？ / 请问该怎么称呼？ : the question alone, not 你怎么称呼你的老板 or 对方的父亲该怎么称呼 (how to address someone else)
    rf"(?:^|[，,。.！!？?\s])(?:请问|那|那么)?[，,]?(?:{_Y}|我)?(?:该|应该|要|可以)?(?:怎么|如何)称呼(?:{_Y}|自己)?(?:呢|啊|呀|比较好|好)?"
    r"\s*(?:[？?！!。，,~～]|$)",
    rf"(?:介绍|描述|说说|谈谈|讲讲|聊聊)(?:一)?下?{_Y}?自己",
    # 谁开发了你 / 你是由谁 / 开发你的团队 / 哪家公司训练了你 / 你是怎么被训练出来的
    rf"谁{_MAKE}(?:出|成|好)?(?:了|的)?{_Y}",
    # 谁把你做出来的, not 谁把你做的菜吃了
    rf"谁(?:把|将){_Y}(?:给)?{_MAKE}(?:出来|成|好)?(?:了|的)?\s*(?:呀|啊|呢|吗)?\s*(?:[？?！!。，,]|$)",
    # 你是怎么训练的 / 你是如何被训练出来的, not 你是怎么设计这个算法的 (the user's task)
    rf"{_Y}是?(?:怎么|如何)被?(?:训练|开发|研发|创造|创建|制造|打造|构建|搭建)(?:出来)?的?\s*(?:呀|啊|呢)?\s*(?:[？?！!。，,]|$)",
    rf"{_Y}(?:是)?由(?:谁|哪)",
    rf"{_MAKE}(?:出|成)?(?:了)?{_Y}的",
    # 意琦行开发了你吗？ / 是 OpenAI 训练了你吧 (who made it, named and asked to confirm)
    rf"{_MAKE}(?:出来|出|成)?了{_Y}\s*(?:吗|嘛|么|吧)",
    rf"{_Y}是(?:用|由|靠|被|基于)?(?:什么|哪|谁).{{0,8}}{_MAKE}(?:出来)?的",
    rf"哪(?:个|家|一家|位)?(?:公司|团队|机构|组织|人|实验室|企业|厂商).{{0,6}}{_MAKE}(?:了|出)?{_Y}",
    rf"{_Y}是?怎么(?:来|诞生|出生|产生|出来|被{_MAKE})",
    # 你来自哪里 / 你属于哪家公司 / 你从哪里来
    rf"{_Y}(?:来自|属于|隶属|归属|出自|诞生于|产自)", rf"{_Y}(?:是)?从哪(?:里|儿)?来",
    # 你是基于什么模型的 / 你用的是什么大模型 / 你用的什么底座模型 / 你和 GPT-4 有什么关系 (not 你用的是什么模型来做
    # 情感分析: the user's task)
    rf"{_Y}(?:是)?(?:基于|依托|建立在)",
    rf"{_Y}(?:现在)?(?:(?:是|用了|基于)?{_WHICH}|(?:用|使用|采用|运行|跑)的是?{_WHICH}?)的?(?:大|底座|基座|基础|底层|预训练)?"
    r"(?:语言)?(?:模型|版本)(?!\s*(?:来|去|做|进行|处理|训练|预测|分类|分析|识别))",
    rf"{_Y}.{{0,4}}(?:归|属于)(?:哪|谁)", rf"{_Y}(?:有|有没有)?(?:自我意识|意识|感情|情感|灵魂)", rf"{_Y}(?:有)?多少(?:个)?参数",
    rf"{_Y}(?:有)?(?:什么|哪些)(?:事情?)?(?:是)?(?:做不到|不能做|不会做|不会的)",
    rf"{_Y}(?:和|与|跟)[^，,。？?！!]{{1,20}}(?:关系|区别|不同|一样|同一个|一家|一回事|比|哪个|谁(?:更|比较)?(?:厉害|强|聪明|好))",
    # 你是 ChatGPT 吗 / 你是不是文心一言 / 你是 AI 还是真人 (not 你是否…吗, 你是不是觉得…)
    rf"{_Y}(?:到底|究竟|其实|真的)?是(?!否).{{1,16}}[吗吧]",
    rf"{_Y}(?:到底|究竟|其实|真的|本来)?就?是\s*(?!否)[A-Za-z]",
    rf"{_Y}是不是(?!觉得|认为|想|忘|在|要|会|能|可以|应该|喜欢|知道|搞|弄|说|有|太|很|真的)",
    rf"{_Y}(?:到底|究竟|其实|真的)?是(?!否).{{1,12}}(?:还是|是)", rf"{_Y}是(?:什么|哪种|哪一种)(?:模型|人工智能|ai|东西|助手|程序|机器人)",
    # what the assistant can do is about itself too: 你能做什么 / 你有什么功能 / 你擅长什么 (not 你能给我什么建议, nor
    # 你能做什么菜 / 你可以做什么运动: 什么 followed by a noun other than 事, 工作, 服务… asks about dishes or sports)
    rf"{_Y}(?:都)?(?:能|可以|会)(?:为我|帮我|帮)?(?:做|干|提供|帮上|解决)?(?:些|点)?(?:什么|啥|哪些)"
    r"(?=$|[\s？?！!。.，,、~～…]|[呢啊呀吗吧嘛哦哈和与不]|以及|来帮|有趣|有用|事|工作|任务|服务|帮助|忙|功能|东西|类|种|方面|领域|问题|技能)",
    rf"{_Y}(?:有|的)(?:什么|哪些)?(?:功能|能力|特长|强项|用处|用途|本领|技能|本事)", rf"{_Y}(?:最)?擅长(?:做)?(?:什么|啥|哪些)",
    r"我(?:在|正在)?(?:跟|和|与)谁(?:聊天|说话|对话|交流|讲话|聊)",
    r"(?:跟|和|与)我(?:聊天|说话|对话|交流)的是",
    rf"{_Y}.{{0,12}}(?:还有|有)(?:什么|别的|其他|哪些)(?:本事|功能|能力|技能|本领|特长)",
    # -- English ------------------------------------------------------------------------------
    # "are you ChatGPT?" at the start of a sentence or line, not "are you able to ..." / "which planet are you likely to see"
    rf"(?:^|[,.!?;:，。！？\n])\W*(?:(?:hey|hi|hello|so|and|but|wait|then|honestly|really)\W+)*(?:are|r|were) {_YOU}\b(?!\s+(able|going|sure|ready|free|"
    r"familiar|aware|allowed|willing|available|interested|okay|ok|busy|there|still|kidding|serious)\b)",
    # "who are you?", not "who are you going to vote for / rooting for / to tell me what to do?"
    rf"\bwho(?: (?:exactly|really|actually|else|then|now|the hell))? (?:are|r|were) {_YOU}\b"
    r"(?!\s+(?!working for)(?:\w+ing|to|gonna|supposed|afraid|mad|angry|upset|jealous)\b)",
    r"\b(?:you'?re|you are|ur|u r|u are) (?:not )?(?:really )?(?:chatgpt|gpt|claude|qwen|gemini|llama|smollm|an? (?:ai|bot|robot|human|language model|chatbot))\b",
    rf"\bwho {_YOU} (?:are|were|really are)\b",
    # "your name", "ur creators", not "your name field" or "your background image" (the user's form or page)
    r"\b(?:your|ur|yr) (?:real |true |actual |full |official |original |own )?(?:name|identity|creators?|developers?|makers?|"
    r"authors?|owners?|origins?|background|parent company|company|team|base model|underlying model|architecture|builders?|designers?|programmers?|model name|model version)\b"
    r"(?![\s-]+(?:fields?|box|input|column|attribute|property|variable|param(?:eter)?|label|placeholder|tag|key|string|value|"
    r"image|colou?r|picture|photo|music|noise|check|section|slide|page|here|below|above|and (?:e-?mail|password|address|phone)))",
    r"\bwhat (?:exactly |really |actually )?(?:are|r) (?:you|u)\b(?!\s+(?:able|supposed|going|about|up to|afraid|interested|trying|planning|thinking|"
    r"doing|saying|talking|looking|working|reading|watching|waiting|feeling)\b)",
    r"\b(?:introduce|describe|introduction of|introduction to) (?:yourself|urself)\b", r"\babout yourself\b",
    # "Explain what you are.", "Describe the AI you are", "Tell me something about you.", "Name yourself.",
    # "What name were you given?", "What is this assistant called?"
    r"\b(?:explain|describe|tell me) (?:what|who) (?:you|u) (?:are|r)\s*[.!?]*$",
    rf"\bdescribe the (?:{_AI}) (?:you are|i'm talking to|i am talking to)\b",
    r"\btell me (?:something |a little |a bit |more )?about (?:you|u)\s*[.!?]*$", r"^\W*name (?:yourself|urself)\s*[.!?]*$",
    rf"\bwhat (?:name|names) (?:were|was|have|did) {_YOU} (?:been )?(?:given|get|got)\b",
    rf"\bwhat(?:'s| is) (?:this|the) (?:{_AI}) called\s*[.!?]*$",
    rf"\bwho (?:{_MADE}|is behind|are behind|was behind|stands behind) this (?:{_AI}|app|chat|service)\b", rf"\b{_MADE_YOU}",
    # "What company makes you?", not "what company makes you happy?"
    rf"\b(?:what|which) (?:company|team|organi[sz]ation|lab|firm|group|people)\b.{{0,12}}\b(?:makes|builds|develops|trains|"
    rf"maintains|owns|runs|{_MADE}) {_YOU}\s*[?.!]*$",
    r"\bidentify (?:yourself|urself)\b", r"^\W*(?:u|you|ur|you're) (?:an? )?(?:bot|robot|ai|human|real person|chatbot)\s*[?]",
    rf"\bwho (?:is|are|was|stands) behind {_YOU}\b",
    rf"\bwho(?:'s| is| was) (?:behind|responsible for) (?:you|this {_AI})\b",
    rf"\b(?:{_AI}|company|team|people|who|what)(?:'s| is| are)? (?:behind|powering|powers|running|runs|drives) (?:you|u|this (?:{_AI}|chat|conversation|service|app))\b",
    rf"\b{_AI} (?:i'm|i am|am i) (?:\w+ )?(?:talking|speaking|chatting|using|writing)\b",
    r"\bam i (?:\w+ )?(?:talking|speaking|chatting|writing) (?:to|with) (?:a |an )?(?:real )?(?:human|person|bot|machine|ai|robot|computer)\b",
    r"\b(?:real |actual )(?:person|human) (?:typing|behind|answering|replying|writing|reading)\b",
    rf"\bmakes? {_YOU} (?:different|special|unique)\b", rf"\bhow (?:are|do) {_YOU} (?:different|differ)\b",
    rf"\b(?:skills|abilities|capabilities|features|functions|talents|parameters|layers) do {_YOU} have\b",
    rf"\b{_YOU}(?:'re| (?:were|are|was|got)) (?:\w+ )?{_MADE}\b",
    rf"\b(?:were|are|was) {_YOU} (?:\w+ )?{_MADE}\b",
    rf"\bwho is your (?:creator|developer|author|maker|owner)\b",
    r"\bwho(?:'s| is) this(?: again| exactly| now)?\s*[?!.]*\s*$", rf"\bwho(?:'s| is) (?:this|that) {_AI}\b",
    rf"\b(?:who|which|what)(?: [\w-]+){{0,3}} am i (?:talking|speaking|chatting|writing) (?:to|with)\b",
    r"\bwhom? (?:i'm|i am) (?:\w+ )?(?:talking|speaking|chatting) (?:to|with)\b",
    # "whom do I have the pleasure of talking to?", "who do I have here?"
    r"\bwhom? (?:do|am|have) i (?:have|having|got) (?:here|on the (?:line|other end)|the (?:pleasure|honou?r) of (?:talking|speaking|chatting))\b",
    rf"\bwhose (?:{_AI}|creation|product) (?:are|r) {_YOU}\b",
    r"\b(?:what|how) (?:should|can|could|do|may|shall|would) (?:i|we) (?:call|address|refer to) (?:you|u)\b",
    # "What do people call you?", "what do you call yourself?" (not "what do you call a fish with no eyes?")
    r"\bwhat (?:do|did|does) (?:people|they|others|folks|users|everyone|most people) (?:usually |normally |often )?call (?:you|u)\b",
    rf"\bwhat (?:do|should) {_YOU} call (?:yourself|urself)\b",
    # "Hello! Who's there?" at the end, not a knock-knock joke
    r"^(?![\s\S]*\bknock\b)[\s\S]*\bwho(?:'s|’s| is) there\s*[?!.]*\s*$",
    rf"\bwhere (?:do|did) {_YOU} come from\b",
    rf"\bwhere (?:are|were) {_YOU} (?:from|made|built|created|trained|developed|designed)\b",
    # "what model are you?", not "which model are you using for the regression / planning to buy?"
    rf"\b(?:what|which) (?:kind of |sort of |type of )?(?:{_AI}|version|company|team|organi[sz]ation|lab)\b.{{0,24}}\b(?:(?:are|r) {_YOU}"
    r"(?!\s+(?:planning|going|thinking|considering|buying|getting|choosing|picking|fine-tuning|finetuning|training|"
    r"(?:using|running) (?:for|in|with|on) (?:the|my|our|a|an|this (?!chat|conversation))\b))|"
    rf"powers {_YOU}|is behind {_YOU}|(?:is|are|r) {_YOU} (?:based|built|running|trained) on)\b",
    rf"\b(?:who|which \w+|what \w+) do {_YOU} (?:belong to|work for|represent)\b",
    rf"\b(?:do|did) {_YOU} (?:work for|belong to|come from|represent)\b",
    rf"\bname of this (?:{_AI}|chat)\b",
    rf"\bare {_YOU} (?:from|made by|built by|based on|powered by)\b",
    # "is this ChatGPT?", not "is this ChatGPT-generated text?" (a question about a text)
    r"\bis this (?:chatgpt|gpt|claude|qwen|gemini|llama|smollm|bard|copilot|an? (?:ai|bot|robot|human|real person|chatbot))\b"
    r"(?![\w.-]*[-\s](?:generated|written|made|created|produced|authored|output|text|code|essay|answer|response|style|detector)\b)",
    rf"\b(?:do|have) {_YOU} (?:have|got) a name\b",
    # "what can you do?", "your capabilities" (not "what can you do with leftover rice?")
    rf"\bwhat (?:can(?:'t|not| not)?|could(?:n't| not)?) {_YOU} do\b(?!\s+(?:with|about|to|if|when|in|on)\b)",
    rf"\bwhat {_YOU}(?:'re| are) capable of\b",
    rf"\bwhat {_YOU} can(?:'t|not)? do\b(?!\s+(?:with|about|to|if|when|in|on)\b)",
    rf"\bwhat (?:{_AI}|llm|language model) is this\s*[?!.]*$", r"\byour (?:main |real |true )?(?:purpose|mission)\b",
    r"\byour (?:main |key |core |top |biggest )?(?:capabilities|abilities|strengths|features|skills|functions|limitations|limits|parameters|context window|knowledge cutoff|training data)\b",
    rf"\bhow (?:can|could|will|would) {_YOU} (?:help|assist) (?:me|us)\b(?!\s+(?:with|to|in|on|find|write|make|do)\b)",
    rf"\bin what ways? (?:can|could) {_YOU} (?:help|assist)\b", rf"\bwhat (?:services|help) do {_YOU} (?:offer|provide)\b",
    rf"\bwhat (?:kinds?|sorts?|types?) of (?:tasks|problems|things|questions|jobs|work) (?:can|could|do) {_YOU}\b",
    rf"\bwhat (?:are {_YOU} able to|can {_YOU}) (?:help|assist) (?:me |us )?with\s*[?.!]*$",
    rf"\b(?:did|does|do|was|were|is|has) .{{1,30}}\b(?:make|create|train|develop|build|design|program|write|made|created|trained|developed|built|designed|programmed) {_YOU}\b",
]
_SELF_RE = re.compile("|".join(f"(?:{p})" for p in SELF_REFERENCE), re.IGNORECASE)


# traditional characters of the words above, read as their simplified forms (你是誰 = 你是谁, 自我介紹 =
# 自我介绍); 妳 ("you", said to a woman) is read as 你
_TRADITIONAL = (
    "誰從裡開發創訓練製設計們麼個團隊這嗎為說問誕屬於來稱識機實驗運營還幫種兒與關係區別會負責參數達憶覺甚紹妳簡間請產層礎號對"
    "話後幹長強項領歷據語闆東樣點歸隸專術處務資體業構組織廠擁締編維護寫佈釋靈沒談講該應讓夠辦貴題論碼報書"
)
_SIMPLE = (
    "谁从里开发创训练制设计们么个团队这吗为说问诞属于来称识机实验运营还帮种儿与关系区别会负责参数达忆觉什绍你简间请产层础号对"
    "话后干长强项领历据语板东样点归隶专术处务资体业构组织厂拥缔编维护写布释灵没谈讲该应让够办贵题论码报书"
)
_SIMPLIFIED = str.maketrans(_TRADITIONAL, _SIMPLE)

# a task on a given text (把“你叫什么名字”翻译成英文, "Translate into French: Who are you?", "Fix the grammar: whats
# your name", an alpaca instruction "Summarize" with the text as its input) is about that text, not the
# assistant: quoted text is dropped, and so is whatever follows the first colon or line break after the
# task's words. A line someone says in a story ('the villain says "Who are you?"') drops its quotes only
# ("I never asked: who made you?" still asks)
_TASK_ON_TEXT = re.compile(
    r"翻译|翻成|译成|(?:怎么|如何)(?:说|讲|表达)|改写|润色|总结|概括|纠正|改正|校对|扩写|缩写|续写|仿写|"
    r"translat|\bhow (?:do|would|can|should) (?:you|i|we|one) say\b|\bsummar|\bparaphras|\brephrase|\brewrite|\bre-write|"
    r"\bproofread|\b(?:fix|correct|check)(?: the| my| this| its)? (?:grammar|spelling|typos?|punctuation|sentence|text)\b|"
    # a question about a cited text ("Is this sentence grammatical: who are you?", "这句话有语病吗：你是谁？")
    r"\bgrammatical|\bgrammar\b|语法|语病|\b(?:this|that|these|the following|the given|the|each|every) (?:\w+ ){0,2}?(?:sentences?|"
    r"phrases?|text|passages?|paragraphs?|quotes?|quotations?|lines?|words?|strings?|titles?|headlines?|statements?|tweets?)\b|"
    r"(?:这|下面|以下|下列)(?:个|句|段|一句|几句|这句|这段)?(?:句子|话|短语|文字|文本|段落|标题|台词)",
    re.IGNORECASE)
_SPEECH = re.compile(r"说道|问道|喊道|\b(?:says?|said|asks?|asked|shouts?|shouted)\b", re.IGNORECASE)
_QUOTED = re.compile(r"“[^”]*”|‘[^’]*’|「[^」]*」|『[^』]*』|\"[^\"]*\"|(?<!\w)'.+?'(?!\w)")
_MATERIAL = re.compile(r"[:：\n]")


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_SPACES = re.compile(r"[^\S\n]+")  # a run of white space within a line: spaces, tabs, a no-break space
_CJK_GAP = re.compile(f"(?<=[{_CJK}]) (?=[{_CJK}])")


def _as_typed(text: str) -> str:
    """The prompt as the patterns are written: full-width letters and spaces as ASCII (Ｗｈｏ　ａｒｅ　ｙｏｕ？, as
    Chinese input methods type them), any run of spaces or tabs as one space ("who  are   you"), and none between
    two Chinese characters (你 是 谁); line breaks are kept, as they end a task's instruction."""
    return _CJK_GAP.sub("", _SPACES.sub(" ", unicodedata.normalize("NFKC", text)))


def is_self_reference(prompt: str) -> bool:
    """True when the prompt asks the assistant about itself (its name, author, origin, nature)."""
    text = _as_typed(prompt or "").translate(_SIMPLIFIED)
    task = _TASK_ON_TEXT.search(text)
    if task or _SPEECH.search(text):
        text = _QUOTED.sub(" ", text)
    if task:
        cut = _MATERIAL.search(text)
        if cut and _TASK_ON_TEXT.search(text[: cut.start()]):
            text = text[: cut.start()]
    return bool(_SELF_RE.search(text))
